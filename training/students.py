"""Dense student models for distillation: DeepSeek-architecture configs smaller than the teacher.

The R1 paper distils R1 into small DENSE models by SFT on ~800k R1 samples (Qwen2.5 1.5B..32B and
Llama 8B/70B). Seekflow's students are dense models of the teacher's own architecture (MLA
attention, dense SwiGLU FFN in every layer, no MoE, no MTP), so the same Transformer, trainers, HF
export and evaluation serve them. A student is the teacher's ModelConfig with a few overrides
(widths, depth, heads, MLA ranks); everything a student must share with the teacher is inherited
and cannot be overridden:
- vocab_size: students train on the teacher's samples through the same tokenizer;
- max_position_embeddings and rope_parameters: students serve the same prompt + response lengths.

Each student must be smaller than what the teacher activates per token
(`count_parameters(c).activated`: one embedding row, every block, the head), as the issue asks.
NOTE: the paper's Llama-70B student is larger than V3's 37B activated; that size is left out of the
suggestions below.

    python -m training.students [--profile NAME]

prints the teacher's and each student's parameter counts for a profile.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from training.model import ModelConfig, ModelConfigError
from training.model.accounting import count_parameters

# what a student may set; every other field comes from the teacher or is fixed (dense, no MTP)
STUDENT_FIELDS = (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
    "initializer_range", "rms_norm_eps",
)
SHARED_WITH_TEACHER = ("vocab_size", "max_position_embeddings", "rope_parameters", "rope_interleave")

# Per profile: student name (the distilled_students partition key) -> overrides. Largest first;
# the ratio in each comment is activated parameters over the teacher's, measured with
# count_parameters (the tests keep the order and the ratios honest).
SUGGESTED_SIZES: dict[str, dict[str, dict[str, Any]]] = {
    # teacher 1.25M activated, 42% of it the 4096 x 128 head: the students narrow the width first
    "tiny": {
        "dense-half": dict(  # 0.63M activated (0.50), 0.89M total
            hidden_size=64, num_hidden_layers=4, intermediate_size=384, num_attention_heads=4,
            q_lora_rank=32, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=16, v_head_dim=16),
        "dense-quarter": dict(  # 0.31M activated (0.25), 0.51M total
            hidden_size=48, num_hidden_layers=3, intermediate_size=192, num_attention_heads=4,
            q_lora_rank=24, kv_lora_rank=16, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16),
    },
    # teacher 163M activated
    "small": {
        "dense-half": dict(  # 86M activated (0.53), 111M total
            hidden_size=768, num_hidden_layers=12, intermediate_size=1536, num_attention_heads=12,
            q_lora_rank=256, kv_lora_rank=192, qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64),
        "dense-quarter": dict(  # 43M activated (0.26), 59M total; queries projected directly (V2-Lite)
            hidden_size=512, num_hidden_layers=8, intermediate_size=1536, num_attention_heads=8,
            q_lora_rank=None, kv_lora_rank=128, qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64),
    },
    # teacher 36.6B activated; widths, depths and FFNs of the paper's Qwen2.5 students, V3's MLA dims
    "v3-671b": {
        "dense-32b": dict(  # 31.3B activated (0.85)
            hidden_size=5120, num_hidden_layers=64, intermediate_size=27648, num_attention_heads=40,
            q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128),
        "dense-14b": dict(  # 13.4B activated (0.37)
            hidden_size=5120, num_hidden_layers=48, intermediate_size=13824, num_attention_heads=40,
            q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128),
        "dense-7b": dict(  # 7.1B activated (0.19)
            hidden_size=3584, num_hidden_layers=28, intermediate_size=18944, num_attention_heads=28,
            q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128),
        "dense-1.5b": dict(  # 1.6B activated (0.04); queries projected directly (V2-Lite)
            hidden_size=1536, num_hidden_layers=28, intermediate_size=8960, num_attention_heads=12,
            q_lora_rank=None, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128),
    },
}


class StudentConfigError(ValueError):
    """A student that cannot be built or is not smaller than its teacher; the message names it."""


def student_config(teacher: ModelConfig, name: str, overrides: Mapping[str, Any]) -> ModelConfig:
    """One dense student: the teacher's config, `overrides` applied, MoE and MTP off."""
    bad = sorted(set(overrides) - set(STUDENT_FIELDS))
    if bad:
        shared = [k for k in bad if k in SHARED_WITH_TEACHER]
        why = f" ({', '.join(shared)} must match the teacher)" if shared else ""
        raise StudentConfigError(f"student {name!r}: field(s) {bad} cannot be set{why}; "
                                 f"accepted: {list(STUDENT_FIELDS)}")
    layers = overrides.get("num_hidden_layers", teacher.num_hidden_layers)
    try:
        return dataclasses.replace(
            teacher, **overrides,
            # dense: no routed or shared experts; every layer below first_k_dense_replace, so a reader
            # that decides MoE-ness from first_k_dense_replace alone (as transformers) agrees
            n_routed_experts=0, n_shared_experts=0, first_k_dense_replace=layers,
            num_nextn_predict_layers=0,  # no MTP: students are trained by SFT on next tokens only
        )
    except ModelConfigError as e:
        raise StudentConfigError(f"student {name!r}: {e}") from None


def student_configs(teacher: ModelConfig, sizes: Mapping[str, Mapping[str, Any]]) -> dict[str, ModelConfig]:
    """name -> dense ModelConfig for each entry of `sizes`, each checked to activate fewer
    parameters than the teacher. Raises StudentConfigError naming the student and both sizes."""
    if not sizes:
        raise StudentConfigError("no student sizes given; expected a mapping name -> overrides, e.g. "
                                 f"{SUGGESTED_SIZES['tiny']}")
    limit = count_parameters(teacher).activated
    out = {}
    for name, overrides in sizes.items():
        cfg = student_config(teacher, name, overrides)
        active = count_parameters(cfg).activated
        if active >= limit:
            raise StudentConfigError(
                f"student {name!r} activates {active:,} parameters, not below the teacher's {limit:,} "
                "activated; narrow hidden_size (the head and embedding scale with it), num_hidden_layers "
                "or intermediate_size")
        out[name] = cfg
    return out


def suggested_sizes(profile_name: str) -> dict[str, dict[str, Any]]:
    """The suggested students for a profile (tiny, small, v3-671b)."""
    if profile_name not in SUGGESTED_SIZES:
        raise StudentConfigError(f"no suggested students for profile {profile_name!r}; "
                                 f"known: {sorted(SUGGESTED_SIZES)}; give the sizes explicitly")
    return {k: dict(v) for k, v in SUGGESTED_SIZES[profile_name].items()}


def size_table(teacher: ModelConfig, students: Mapping[str, ModelConfig]) -> list[dict[str, Any]]:
    """Rows (name, layers, hidden, total, activated, share of the teacher's activated) for printing."""
    limit = count_parameters(teacher).activated
    rows = []
    for name, cfg in {"teacher": teacher, **students}.items():
        p = count_parameters(cfg)
        rows.append({"name": name, "layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size,
                     "experts": cfg.n_routed_experts, "total": p.total, "activated": p.activated,
                     "activated_share": p.activated / limit})
    return rows


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    from training.settings import load_profile

    parser = argparse.ArgumentParser(prog="python -m training.students", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", help="profile name (default: SEEKFLOW_PROFILE or tiny)")
    args = parser.parse_args(argv)
    profile = load_profile(args.profile)
    # NOTE: the profile's `distillation.students` once profiles carry one; the suggestions until then
    sizes = getattr(getattr(profile, "distillation", None), "students", None) or suggested_sizes(profile.name)
    rows = size_table(profile.model, student_configs(profile.model, sizes))
    print(f"profile {profile.name}: parameters (main model, no MTP; activated = per token)")
    print(f"{'name':<14}{'layers':>7}{'hidden':>8}{'experts':>8}{'total':>18}{'activated':>18}{'share':>7}")
    for r in rows:
        print(f"{r['name']:<14}{r['layers']:>7}{r['hidden']:>8}{r['experts']:>8}{r['total']:>18,}"
              f"{r['activated']:>18,}{r['activated_share']:>7.2f}")
    return rows


if __name__ == "__main__":
    main()
