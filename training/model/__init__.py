"""The DeepSeek-V3 model (MLA, DeepSeekMoE, MTP), its accounting, Hugging Face interop and generation.

    from training.model import ModelConfig, Transformer, from_pretrained, generate

Only `config` is imported eagerly (stdlib only), so `training.settings` can type its `model:`
section without importing torch; everything else loads on first use.
"""

from __future__ import annotations

import importlib

from .config import ModelConfig, ModelConfigError, RopeParameters

_LAZY = {
    "Transformer": "model", "ModelOutput": "model", "generate": "generation", "Generation": "generation",
    "LatentCache": "attention", "count_parameters": "accounting", "flops_per_token": "accounting",
    "latent_cache_bytes_per_token": "accounting", "mha_cache_bytes_per_token": "accounting",
    "save_pretrained": "hf",
}


def from_pretrained(directory, **kwargs):
    """Load a transformers `DeepseekV3ForCausalLM` checkpoint directory (see hf.py)."""
    from .hf import from_pretrained as _load

    return _load(directory, **kwargs)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ModelConfig", "ModelConfigError", "RopeParameters", "from_pretrained", *_LAZY]
