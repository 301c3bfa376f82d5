"""The Hugging Face export every trainer ends with: one directory loadable as `DeepseekV3ForCausalLM`.

    export_model(engine.module, module.config, start_export_dir, output_dir / "export")

Gathers the trained module's full state (expert blocks from every expert-parallel rank, named back to
the plain model's keys: training/expert_parallel.py), loads it into a plain `Transformer` built on the
meta device (no second random init, no second copy of the weights), writes config.json +
safetensors, and copies the tokenizer files next to them, so the directory is a model *and* its
tokenizer (training/evaluate.py and the MLflow pyfunc read both from one place).

The MTP modules go into the export when the module has them (pretraining keeps them) and not
otherwise (the R1 stages load their start model without MTP).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import torch

from training.model import ModelConfig

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def copy_tokenizer(tokenizer_dir: Path, out_dir: Path) -> list[str]:
    """Copy the tokenizer files present in `tokenizer_dir`; tokenizer.json must be one of them."""
    tokenizer_dir = Path(tokenizer_dir)
    if not (tokenizer_dir / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{tokenizer_dir}/tokenizer.json not found: the export needs the tokenizer "
                                "(a tokenizer directory, or an export that holds one)")
    copied = []
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copy2(tokenizer_dir / name, Path(out_dir) / name)
            copied.append(name)
    return copied


def export_model(module: torch.nn.Module, model_cfg: ModelConfig, tokenizer_dir: Path, out_dir: Path) -> Path:
    """Write `out_dir` (replacing it) from `module`, a training/model Transformer, expert-parallel or not.

    Collective when torch.distributed is initialised: every rank must call it (the expert blocks are
    gathered); rank 0 writes, the others wait. `model_cfg` is the module's architecture; its
    num_nextn_predict_layers is taken from the module's own MTP modules.
    """
    from training.distributed import barrier
    from training.expert_parallel import full_state_dict
    from training.model import Transformer

    state = full_state_dict(module)
    out_dir = Path(out_dir)
    if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        barrier()
        return out_dir
    n_mtp = len({key.split(".")[1] for key in state if key.startswith("mtp.")})
    cfg = dataclasses.replace(model_cfg, num_nextn_predict_layers=n_mtp)
    with torch.device("meta"):
        plain = Transformer(cfg)
    plain.load_state_dict(state, strict=True, assign=True)
    partial = out_dir.with_name(f".{out_dir.name}.partial")  # a crash never leaves a half-written export
    shutil.rmtree(partial, ignore_errors=True)
    plain.save_pretrained(partial)
    copy_tokenizer(tokenizer_dir, partial)
    shutil.rmtree(out_dir, ignore_errors=True)
    partial.rename(out_dir)
    barrier()
    return out_dir
