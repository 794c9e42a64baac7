"""Fixtures of the pretrained-import tests: one tiny random model per architecture, saved once."""

import pytest
from helpers.hf_models import HF_CONFIGS, save_tiny


@pytest.fixture(scope="session", params=sorted(HF_CONFIGS))
def hf_model(request, tmp_path_factory):
    """(kind, directory, the transformers model) for each architecture, saved once per session."""
    directory = tmp_path_factory.mktemp(f"hf_{request.param}")
    return request.param, directory, save_tiny(request.param, directory)
