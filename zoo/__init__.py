"""memzoo: interchangeable sequence backbones with a product-key memory, trained with Lightning."""

from zoo.generate import generate, load_model
from zoo.model import LanguageModel, ModelConfig, build_model

__all__ = ["LanguageModel", "ModelConfig", "build_model", "generate", "load_model"]
