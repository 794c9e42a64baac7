"""Product-key memory: which slots (``ProductKeys``), where values live (``ValueTable``), how the read
enters the residual (``MemoryPlus``)."""

from zoo.memory.config import MemoryConfig
from zoo.memory.layer import MemoryPlus, make_value_table, memory_layers
from zoo.memory.product_keys import ProductKeys, product_topk
from zoo.memory.values import VALUE_GROUP, ValueTable

__all__ = [
    "MemoryConfig",
    "MemoryPlus",
    "ProductKeys",
    "ValueTable",
    "VALUE_GROUP",
    "make_value_table",
    "memory_layers",
    "product_topk",
]
