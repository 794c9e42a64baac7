"""memzoo: interchangeable sequence backbones with a product-key memory, trained with Lightning."""

from zoo.model import LanguageModel, ModelConfig, build_model

__all__ = ["LanguageModel", "ModelConfig", "build_model"]
