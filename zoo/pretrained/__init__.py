"""Pretrained models in and out: Hugging Face model directories (Llama, Mamba, Mamba-2) imported
into memzoo's ``LanguageModel``, memory added to them as an exact no-op, models written as
``config.json`` + ``model.safetensors`` and read back without pickle, and an lm-evaluation-harness
model class. Needs the ``hf`` extra (transformers, safetensors, tokenizers)."""
