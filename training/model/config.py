"""ModelConfig: every shape and knob of the DeepSeek-V3 model, in one dataclass.

Field names follow transformers' `DeepseekV3Config` wherever it has one, so a profile's `model:`
section reads like a Hugging Face `config.json` and the adapter (`hf.py`) maps almost one to one.
Fields with no transformers counterpart (the balancing speed gamma, the balance-loss alpha, the MTP
loss weight lambda) carry the paper's names in a comment.

Invalid combinations fail at construction, naming the fields at fault and what would be accepted.
This module imports nothing from `training.settings` (no cycle) and nothing but the stdlib.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


class ModelConfigError(ValueError):
    """A model configuration that cannot be built; the message names the fields."""


@dataclass
class RopeParameters:
    """transformers' `rope_parameters` mapping. `rope_type: yarn` extends the context by `factor`."""

    rope_type: str = "default"  # "default" (plain RoPE) or "yarn"
    rope_theta: float = 10000.0
    # yarn: positions up to factor x original_max_position_embeddings
    factor: float = 1.0
    original_max_position_embeddings: int = 4096
    beta_fast: float = 32.0  # rotations above which a dimension is extrapolated (kept as is)
    beta_slow: float = 1.0  # rotations below which a dimension is interpolated (divided by factor)
    mscale: float = 1.0  # attention temperature: 0.1 * mscale * ln(factor) + 1
    mscale_all_dim: float = 1.0

    def __post_init__(self) -> None:
        if self.rope_type not in ("default", "yarn"):
            raise ModelConfigError(
                f"rope_parameters.rope_type is {self.rope_type!r}; accepted: 'default', 'yarn'"
            )
        if self.rope_type == "yarn" and self.factor < 1.0:
            raise ModelConfigError(f"rope_parameters.factor is {self.factor}; yarn needs factor >= 1")
        if self.rope_theta <= 0:
            raise ModelConfigError(f"rope_parameters.rope_theta is {self.rope_theta}; must be > 0")


@dataclass
class ModelConfig:
    # widths
    vocab_size: int = 4096
    hidden_size: int = 128
    intermediate_size: int = 384  # dense FFN width (the first_k_dense_replace layers)
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 1024  # longest sequence (prompt + generation) the model serves
    initializer_range: float = 0.006  # std of every weight at init (the paper's 0.006)
    # mla: queries and keys/values go through low-rank latents; the RoPE key is shared by all heads
    q_lora_rank: int | None = 64  # None: queries projected directly (DeepSeek-V2-Lite style)
    kv_lora_rank: int = 32  # the cached latent c^KV, per token and layer
    qk_nope_head_dim: int = 32  # per-head key/query dims without position
    qk_rope_head_dim: int = 16  # decoupled RoPE dims (cached once per token, not per head)
    v_head_dim: int = 32
    # rope / yarn
    rope_parameters: RopeParameters = field(default_factory=RopeParameters)
    rope_interleave: bool = True  # RoPE rotates adjacent pairs (DeepSeek's layout)
    # moe: n_routed_experts = 0 makes every layer a dense FFN
    n_routed_experts: int = 16
    n_shared_experts: int = 1
    num_experts_per_tok: int = 4  # K_r, routed experts per token
    n_group: int = 4  # experts are split in groups; a token only uses topk_group of them
    topk_group: int = 2
    moe_intermediate_size: int = 64  # width of one (fine-grained) expert
    first_k_dense_replace: int = 1  # the first k layers use a dense FFN
    scoring_func: str = "sigmoid"  # affinities: "sigmoid" (V3) or "softmax" (V2)
    routed_scaling_factor: float = 2.5
    norm_topk_prob: bool = True  # normalise the selected affinities to sum to 1
    bias_update_speed: float = 0.001  # gamma: aux-loss-free bias step after each optimizer step
    seq_aux_loss_alpha: float = 0.0001  # alpha of the sequence-wise balance loss; 0 turns it off
    # mtp: D extra modules predicting tokens 2..D+1 ahead, trained with weight lambda
    num_nextn_predict_layers: int = 1  # D; 0 turns MTP off
    mtp_loss_weight: float = 0.3  # lambda (0.3 early in V3 pretraining, 0.1 later)

    def __post_init__(self) -> None:
        if isinstance(self.rope_parameters, dict):  # built from plain data (json, yaml)
            self.rope_parameters = RopeParameters(**self.rope_parameters)
        if self.q_lora_rank == 0:
            self.q_lora_rank = None
        errors = self._errors()
        if errors:
            raise ModelConfigError("invalid model config:\n  " + "\n  ".join(errors))

    def _errors(self) -> list[str]:
        e: list[str] = []
        positive = [
            "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "max_position_embeddings", "kv_lora_rank", "qk_rope_head_dim",
            "v_head_dim",
        ]
        for name in positive:
            if getattr(self, name) < 1:
                e.append(f"{name} is {getattr(self, name)}; must be >= 1")
        if self.q_lora_rank is not None and self.q_lora_rank < 0:
            e.append(f"q_lora_rank is {self.q_lora_rank}; must be >= 1 or null")
        if self.qk_nope_head_dim < 0:
            e.append(f"qk_nope_head_dim is {self.qk_nope_head_dim}; must be >= 0")
        if self.qk_rope_head_dim % 2:
            e.append(f"qk_rope_head_dim is {self.qk_rope_head_dim}; RoPE rotates pairs, so it must be even")
        if self.num_nextn_predict_layers < 0:
            e.append(f"num_nextn_predict_layers is {self.num_nextn_predict_layers}; must be >= 0")
        if self.mtp_loss_weight < 0:
            e.append(f"mtp_loss_weight is {self.mtp_loss_weight}; must be >= 0")
        if not 0 <= self.first_k_dense_replace:
            e.append(f"first_k_dense_replace is {self.first_k_dense_replace}; must be >= 0")
        if self.n_routed_experts < 0:
            e.append(f"n_routed_experts is {self.n_routed_experts}; must be >= 0 (0: dense model)")
        if self.n_routed_experts > 0:
            e += self._moe_errors()
        return e

    def _moe_errors(self) -> list[str]:
        e: list[str] = []
        E, K, G, TG = self.n_routed_experts, self.num_experts_per_tok, self.n_group, self.topk_group
        if self.scoring_func not in ("sigmoid", "softmax"):
            e.append(f"scoring_func is {self.scoring_func!r}; accepted: 'sigmoid', 'softmax'")
        if self.moe_intermediate_size < 1:
            e.append(f"moe_intermediate_size is {self.moe_intermediate_size}; must be >= 1")
        if self.n_shared_experts < 0:
            e.append(f"n_shared_experts is {self.n_shared_experts}; must be >= 0")
        if not 1 <= K <= E:
            e.append(f"num_experts_per_tok ({K}) must be between 1 and n_routed_experts ({E})")
        if G < 1 or E % G:
            e.append(f"n_routed_experts ({E}) must be divisible by n_group ({G} must be >= 1)")
            return e
        if not 1 <= TG <= G:
            e.append(f"topk_group ({TG}) must be between 1 and n_group ({G})")
        elif K > TG * (E // G):
            e.append(
                f"num_experts_per_tok ({K}) exceeds the experts reachable in topk_group ({TG}) "
                f"groups of n_routed_experts / n_group ({E // G}) experts"
            )
        if G > 1 and E // G < 2:
            e.append(
                f"n_routed_experts / n_group is {E // G}; a group is scored by its top-2 experts, "
                "so each group needs >= 2 (lower n_group)"
            )
        if self.bias_update_speed < 0 or self.seq_aux_loss_alpha < 0:
            e.append("bias_update_speed and seq_aux_loss_alpha must be >= 0")
        return e

    # derived -----------------------------------------------------------------------------------

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def softmax_scale(self) -> float:
        """1/sqrt(d_qk), times yarn's mscale^2 when the context is extended (as transformers)."""
        scale = self.qk_head_dim**-0.5
        rp = self.rope_parameters
        if rp.rope_type == "yarn" and rp.mscale_all_dim:
            m = yarn_mscale(rp.factor, rp.mscale_all_dim)
            scale = scale * m * m
        return scale

    def is_moe_layer(self, layer_id: int) -> bool:
        """Layer ids count main layers first, then MTP blocks (L, L+1, ...), as DeepSeek's files."""
        return self.n_routed_experts > 0 and layer_id >= self.first_k_dense_replace


def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0
