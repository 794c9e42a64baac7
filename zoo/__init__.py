"""memzoo: interchangeable sequence backbones with a product-key memory, trained with Lightning."""

from zoo.model.generate import generate
from zoo.model.language_model import LanguageModel, ModelConfig, build_model
from zoo.pretrained.directory import load_model
from zoo.pretrained.importing import from_pretrained

__all__ = ["LanguageModel", "ModelConfig", "build_model", "from_pretrained", "generate", "load_model"]
