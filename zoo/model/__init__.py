"""The model: ``build_model(ModelConfig)`` -> ``LanguageModel`` (``language_model``: embedding, blocks
of mixer + channel, norm, head), its channels (``channels``, ``mlp``), FLOP and state counts
(``flops``), the size estimate of a run (``size_budget``), generation (``generate``) and loading a
checkpoint into a model (``loading``)."""

from zoo.model.language_model import LanguageModel, ModelConfig, build_model

__all__ = ["LanguageModel", "ModelConfig", "build_model"]
