"""Parameter counts, training FLOPs per token (for MFU) and KV-cache sizes, from the config alone.

Nothing is allocated: every figure is a closed form of ModelConfig (tests check the forms against a
model built on the meta device). Conventions:
- "activated" counts what one token passes through: all attention and dense weights, the router,
  the shared experts, num_experts_per_tok routed experts, the head, and the ONE embedding row the
  token looks up (not the whole table). Router biases are buffers, not parameters. For V3 this
  gives 36.63B, DeepSeek's README_WEIGHTS.md says 36.7B (the report rounds to 37B); counting the
  whole embedding table would give 37.55B.
- FLOPs per token (training) = 6 x activated non-embedding parameters (the embedding is a lookup;
  the head is a matmul and counts) + the attention term 6 x layers x heads x (qk_head_dim +
  v_head_dim) x seq_len: QK^T and AV, forward 2 FLOPs per multiply-add and backward twice that. The
  causal mask is not discounted (PaLM's and nanoGPT's MFU convention); pass causal=True to halve
  the attention term. MTP blocks are included by default since training runs them.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import ModelConfig


@dataclass(frozen=True)
class ParamCounts:
    total: int  # main model: embedding + blocks + final norm + head (no MTP)
    activated: int  # main model, per token (one embedding row)
    embedding: int  # the token embedding table (the head is counted apart in both totals)
    mtp: int  # MTP modules alone (projection, norms, blocks)
    mtp_activated: int
    mtp_with_shared: int  # MTP modules plus the embedding and head they share (how the paper counts 14B)

    @property
    def total_with_mtp(self) -> int:
        return self.total + self.mtp


def _attention_params(c: ModelConfig) -> int:
    H, D = c.num_attention_heads, c.hidden_size
    if c.q_lora_rank is None:
        q = D * H * c.qk_head_dim
    else:
        q = D * c.q_lora_rank + c.q_lora_rank + c.q_lora_rank * H * c.qk_head_dim
    kv = D * (c.kv_lora_rank + c.qk_rope_head_dim) + c.kv_lora_rank + c.kv_lora_rank * H * (c.qk_nope_head_dim + c.v_head_dim)
    return q + kv + H * c.v_head_dim * D


def _block_params(c: ModelConfig, layer_id: int) -> tuple[int, int]:
    """(total, activated) of one block: two norms, MLA, and its FFN."""
    D = c.hidden_size
    common = 2 * D + _attention_params(c)
    if not c.is_moe_layer(layer_id):
        ffn = 3 * D * c.intermediate_size
        return common + ffn, common + ffn
    expert = 3 * D * c.moe_intermediate_size
    router = c.n_routed_experts * D
    shared = c.n_shared_experts * expert
    total = router + shared + c.n_routed_experts * expert
    active = router + shared + c.num_experts_per_tok * expert
    return common + total, common + active


def count_parameters(c: ModelConfig) -> ParamCounts:
    D, V, L = c.hidden_size, c.vocab_size, c.num_hidden_layers
    embedding, head = V * D, V * D
    blocks = [_block_params(c, i) for i in range(L)]
    total = embedding + sum(t for t, _ in blocks) + D + head
    activated = D + sum(a for _, a in blocks) + D + head  # one embedding row, blocks, norm, head
    mtp = mtp_active = 0
    for k in range(c.num_nextn_predict_layers):
        t, a = _block_params(c, L + k)
        extra = 3 * D + 2 * D * D  # enorm, hnorm, shared_head.norm; eh_proj
        mtp += t + extra
        mtp_active += a + extra
    shared = (embedding + head) if c.num_nextn_predict_layers else 0
    return ParamCounts(total=total, activated=activated, embedding=embedding, mtp=mtp,
                       mtp_activated=mtp_active, mtp_with_shared=mtp + shared)


def flops_per_token(c: ModelConfig, seq_len: int, include_mtp: bool = True, causal: bool = False) -> float:
    """Training FLOPs (forward + backward) per token at sequence length seq_len."""
    p = count_parameters(c)
    dense = p.activated - c.hidden_size  # drop the embedding row: a lookup, not a matmul
    n_attn = c.num_hidden_layers
    if include_mtp and c.num_nextn_predict_layers:
        dense += p.mtp_activated + c.num_nextn_predict_layers * c.vocab_size * c.hidden_size  # + head per depth
        n_attn += c.num_nextn_predict_layers
    attn = 6 * n_attn * c.num_attention_heads * (c.qk_head_dim + c.v_head_dim) * seq_len
    return 6 * dense + (attn / 2 if causal else attn)


def latent_cache_bytes_per_token(c: ModelConfig, element_bytes: int = 2) -> int:
    """MLA's cache: (kv_lora_rank + qk_rope_head_dim) x layers x element size."""
    return (c.kv_lora_rank + c.qk_rope_head_dim) * c.num_hidden_layers * element_bytes


def mha_cache_bytes_per_token(c: ModelConfig, element_bytes: int = 2) -> int:
    """A standard multi-head cache of the same heads and head dims: full keys and values."""
    return c.num_attention_heads * (c.qk_head_dim + c.v_head_dim) * c.num_hidden_layers * element_bytes
