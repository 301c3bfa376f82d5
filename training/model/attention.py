"""RMSNorm, YaRN rotary embeddings and Multi-head Latent Attention (MLA).

MLA (DeepSeek-V2, section 2.1) compresses keys and values of each token into one latent c^KV of
`kv_lora_rank` dims, plus a `qk_rope_head_dim` RoPE key shared by every head; queries go through
their own low-rank latent. Per head, the key is [W_UK c^KV ; rope(k_pe)] and the value W_UV c^KV.

Two ways to compute the same attention:
- `naive` (training, no cache): expand c^KV into per-head keys and values and call SDPA.
- `absorbed` (inference, with a `LatentCache`): W_UK is folded into the query and W_UV into the
  output, so scores and values are computed directly against the cached latents. The cache holds
  only (kv_lora_rank + qk_rope_head_dim) numbers per token and layer, which is what makes MLA's
  cache 50-70x smaller than a multi-head cache of the same heads.

Which SDPA kernel runs the naive path on a GPU is `MLA.sdpa_backend`, set from outside (the
trainer's `pretrain.attention`): "auto" leaves PyTorch's choice (cuDNN's kernel on an H200 with torch
2.11, the fastest measured: BENCHMARKS.md); "flash" zero-pads v to the q/k head dim, since PyTorch's
flash kernel needs equal head dims (the padded output columns are exactly zero and are cut off);
"cudnn" and "efficient" ask for those kernels. CPU tensors always take "auto".

It matches transformers' `DeepseekV3Attention` (tests/test_model_hf.py compares logits). NOTE: with
`rope_interleave` transformers rotates adjacent pairs (x0, x1), (x2, x3), ... and writes the result
de-interleaved ([evens' ; odds']); we do the same. Queries and keys share the layout, so q.k is
exactly that of DeepSeek's interleaved complex rotation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from .config import ModelConfig, yarn_mscale


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # NOTE: normalise in float32, scale in the input dtype (as transformers; bf16-safe)
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


# ---------------------------------------------------------------------------------------------
# rotary embeddings (YaRN)


def rope_frequencies(cfg: ModelConfig) -> tuple[torch.Tensor, float]:
    """Inverse frequencies (rope_dim/2,) and the cos/sin scale ("attention factor").

    YaRN (Peng et al. 2023): dimensions rotating fast (more than beta_fast turns over the original
    context) keep their frequency, slow ones (under beta_slow turns) are divided by `factor`, and a
    linear ramp blends the ones between. Same formulas as transformers' `_compute_yarn_parameters`.
    """
    rp, dim = cfg.rope_parameters, cfg.qk_rope_head_dim
    base = rp.rope_theta
    pos_freqs = base ** (torch.arange(0, dim, 2, dtype=torch.float32, device="cpu") / dim)
    if rp.rope_type == "default":
        return 1.0 / pos_freqs, 1.0
    factor, orig = rp.factor, rp.original_max_position_embeddings

    def correction_dim(rotations: float) -> float:  # the dim index that turns `rotations` times
        return dim * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(correction_dim(rp.beta_fast)), 0)
    high = min(math.ceil(correction_dim(rp.beta_slow)), dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float32, device="cpu") - low) / (high - low)).clamp(0, 1)
    extrapolate = 1 - ramp  # 1: keep the frequency, 0: interpolate
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolate) + (1.0 / pos_freqs) * extrapolate
    if rp.mscale and rp.mscale_all_dim:
        attention_factor = yarn_mscale(factor, rp.mscale) / yarn_mscale(factor, rp.mscale_all_dim)
    else:
        attention_factor = yarn_mscale(factor)
    return inv_freq, float(attention_factor)


class RotaryEmbedding(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("inv_freq", torch.empty(cfg.qk_rope_head_dim // 2), persistent=False)
        self.attention_factor = 1.0
        self.reset_parameters()

    def reset_parameters(self) -> None:
        inv_freq, self.attention_factor = rope_frequencies(self.cfg)  # computed on the CPU
        self.inv_freq = inv_freq.to(self.inv_freq.device)  # meta stays meta

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids (B or 1, T) -> cos, sin, each (B or 1, T, rope_dim / 2) in float32."""
        angles = position_ids[..., None].float() * self.inv_freq.float()
        return angles.cos() * self.attention_factor, angles.sin() * self.attention_factor


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleave: bool) -> torch.Tensor:
    """x (B, T, H, d), cos/sin (B, T, d/2) -> x rotated, same shape and dtype."""
    d = x.shape[-1]
    if interleave:
        x1, x2 = x[..., 0::2], x[..., 1::2]  # pairs (x0, x1), (x2, x3), ...
    else:
        x1, x2 = x[..., : d // 2], x[..., d // 2 :]  # pairs (x_i, x_{i + d/2})
    cos, sin = cos[:, :, None, :].to(x.dtype), sin[:, :, None, :].to(x.dtype)  # (B, T, 1, d/2)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


# ---------------------------------------------------------------------------------------------
# the latent cache


class LatentCache:
    """What MLA keeps per generated token: the normed latent c^KV and the rotated shared RoPE key.

    Preallocated for `max_len` positions. Sequences are left-padded: row b's first `pad[b]` slots
    are padding, never attended to. `length` is how many slots are filled (same for all rows).
    """

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, pad: torch.Tensor,
                 dtype: torch.dtype, device: torch.device | str):
        L = cfg.num_hidden_layers
        self.kv = [torch.zeros(batch, max_len, cfg.kv_lora_rank, dtype=dtype, device=device) for _ in range(L)]
        self.pe = [torch.zeros(batch, max_len, cfg.qk_rope_head_dim, dtype=dtype, device=device) for _ in range(L)]
        self.pad = pad.to(device)  # (B,) left padding per row
        self.length = 0
        self.max_len = max_len

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.kv + self.pe)


# ---------------------------------------------------------------------------------------------
# multi-head latent attention


class MLA(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        self.cfg, self.layer_id = cfg, layer_id
        H, D = cfg.num_attention_heads, cfg.hidden_size
        self.n_heads = H
        self.nope, self.rope, self.v_dim = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
        self.kv_rank = cfg.kv_lora_rank
        if cfg.q_lora_rank is None:
            self.q_proj = nn.Linear(D, H * cfg.qk_head_dim, bias=False)
        else:
            self.q_a_proj = nn.Linear(D, cfg.q_lora_rank, bias=False)
            self.q_a_layernorm = RMSNorm(cfg.q_lora_rank, cfg.rms_norm_eps)
            self.q_b_proj = nn.Linear(cfg.q_lora_rank, H * cfg.qk_head_dim, bias=False)
        # one projection gives the latent and the shared RoPE key ("mqa": one key for all heads)
        self.kv_a_proj_with_mqa = nn.Linear(D, self.kv_rank + self.rope, bias=False)
        self.kv_a_layernorm = RMSNorm(self.kv_rank, cfg.rms_norm_eps)
        self.kv_b_proj = nn.Linear(self.kv_rank, H * (self.nope + self.v_dim), bias=False)  # W_UK ; W_UV
        self.o_proj = nn.Linear(H * self.v_dim, D, bias=False)
        self.softmax_scale = cfg.softmax_scale
        self.sdpa_backend = "auto"  # on CUDA: "auto", "flash" (v padded), "cudnn", "efficient"

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor | None = None, cache: LatentCache | None = None) -> torch.Tensor:
        """x (B, T, D); cos/sin (B|1, T, rope/2); mask (B, 1, T, S) bool, True = attend, or None
        for plain causal; cache: read and written at slots [cache.length, cache.length + T)."""
        B, T, _ = x.shape
        H, il = self.n_heads, self.cfg.rope_interleave
        if self.cfg.q_lora_rank is None:
            q = self.q_proj(x)
        else:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q = q.view(B, T, H, self.nope + self.rope)
        q_nope, q_pe = q.split([self.nope, self.rope], dim=-1)  # (B, T, H, nope), (B, T, H, rope)
        q_pe = apply_rope(q_pe, cos, sin, il)
        kv, k_pe = self.kv_a_proj_with_mqa(x).split([self.kv_rank, self.rope], dim=-1)
        kv = self.kv_a_layernorm(kv)  # (B, T, r): c^KV
        k_pe = apply_rope(k_pe[:, :, None, :], cos, sin, il)[:, :, 0]  # (B, T, rope)
        if cache is None:
            y = self._naive(q_nope, q_pe, kv, k_pe, mask)
        else:
            start, end = cache.length, cache.length + T
            cache.kv[self.layer_id][:, start:end] = kv
            cache.pe[self.layer_id][:, start:end] = k_pe
            y = self._absorbed(q_nope, q_pe, cache.kv[self.layer_id][:, :end], cache.pe[self.layer_id][:, :end], mask)
        return self.o_proj(y.reshape(B, T, H * self.v_dim))

    def _naive(self, q_nope, q_pe, kv, k_pe, mask):
        B, T, H, _ = q_nope.shape
        kv = self.kv_b_proj(kv).view(B, T, H, self.nope + self.v_dim)
        k_nope, v = kv.split([self.nope, self.v_dim], dim=-1)  # (B, T, H, nope), (B, T, H, v)
        q = torch.cat([q_nope, q_pe], dim=-1).transpose(1, 2)  # (B, H, T, qk)
        k = torch.cat([k_nope, k_pe[:, :, None, :].expand(B, T, H, self.rope)], dim=-1).transpose(1, 2)
        v = v.transpose(1, 2)  # (B, H, T, v)
        if self.sdpa_backend == "auto" or not q.is_cuda:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                               scale=self.softmax_scale)  # (B, H, T, v)
        else:
            y = self._sdpa_on(self.sdpa_backend, q, k, v, mask)
        return y.transpose(1, 2)  # (B, T, H, v)

    def _sdpa_on(self, backend: str, q, k, v, mask):
        """SDPA on one named kernel; "flash" pads v (B, H, T, v) to q's head dim, then cuts it back."""
        kernels = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                   "efficient": SDPBackend.EFFICIENT_ATTENTION}
        assert backend in kernels, f"MLA.sdpa_backend is {backend!r}; accepted: 'auto', {sorted(kernels)}"
        pad = q.shape[-1] - v.shape[-1] if backend == "flash" else 0
        with sdpa_kernel([kernels[backend]]):
            y = F.scaled_dot_product_attention(q, k, F.pad(v, (0, pad)) if pad else v, attn_mask=mask,
                                               is_causal=mask is None, scale=self.softmax_scale)
        return y[..., : v.shape[-1]] if pad else y  # (B, H, T, v)

    def _absorbed(self, q_nope, q_pe, kv, pe, mask):
        """Attention against the latents (DeepSeek-V3 inference code, attn_impl="absorb").
        q_nope (B, T, H, nope), q_pe (B, T, H, rope), kv (B, S, r), pe (B, S, rope)."""
        w = self.kv_b_proj.weight.view(self.n_heads, self.nope + self.v_dim, self.kv_rank)
        w_uk, w_uv = w[:, : self.nope], w[:, self.nope :]  # (H, nope, r), (H, v, r)
        q_lat = torch.einsum("bthd,hdc->bthc", q_nope, w_uk)  # (B, T, H, r): W_UK folded into q
        scores = torch.einsum("bthc,bsc->bhts", q_lat, kv) + torch.einsum("bthr,bsr->bhts", q_pe, pe)
        scores = scores.float() * self.softmax_scale  # (B, H, T, S)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        elif scores.shape[2] > 1:
            T, S = scores.shape[2:]
            causal = torch.ones(T, S, dtype=torch.bool, device=scores.device).tril(S - T)
            scores = scores.masked_fill(~causal, float("-inf"))
        p = scores.softmax(dim=-1).to(kv.dtype)
        o = torch.einsum("bhts,bsc->bthc", p, kv)  # (B, T, H, r)
        return torch.einsum("bthc,hdc->bthd", o, w_uv)  # (B, T, H, v): W_UV applied after
