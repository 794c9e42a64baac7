"""memzoo: interchangeable sequence backbones with a product-key memory, trained with Lightning."""

from zoo.model.generate import generate
from zoo.model.language_model import LanguageModel, ModelConfig, build_model
from zoo.model.loading import load_model

__all__ = ["LanguageModel", "ModelConfig", "build_model", "generate", "load_model"]
