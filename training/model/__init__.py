"""The DeepSeek-V3 model (MLA, DeepSeekMoE, MTP), its accounting, Hugging Face interop and generation.

    from training.model import ModelConfig, Transformer, from_pretrained, generate
"""

from .config import ModelConfig, ModelConfigError, RopeParameters
from .generation import Generation, generate
from .model import ModelOutput, Transformer


def from_pretrained(directory, **kwargs) -> Transformer:
    """Load a transformers `DeepseekV3ForCausalLM` checkpoint directory (see hf.py)."""
    from .hf import from_pretrained as _load

    return _load(directory, **kwargs)


__all__ = ["ModelConfig", "ModelConfigError", "RopeParameters", "Transformer", "ModelOutput", "from_pretrained", "generate",
           "Generation"]
