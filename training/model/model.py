"""The DeepSeek-V3 model: blocks, multi-token prediction, and the trainer-facing hooks.

Reads top to bottom with attention.py (norm, RoPE, MLA) and moe.py (MLP, DeepSeekMoE) before it:

  Block         x + MLA(norm(x)), then x + FFN(norm(x)); FFN dense for the first layers, else MoE
  MTPModule     depth k: h^k = Block(eh_proj([norm(Emb(t_{i+k})) ; norm(h^{k-1}_i)])), predicts t_{i+k+1}
  Transformer   embed -> blocks -> norm -> lm_head; + D MTP modules sharing embedding and head

Written for a single device: parallelism, FP8, activation checkpointing and compile are applied from
outside. Parameter names mirror transformers' `DeepseekV3ForCausalLM` without its `model.` prefix,
so hf.py only splits the stacked experts (w1/w3/w2 -> gate/up/down_proj per expert) and renames
the MTP modules.

    model(ids)                          -> logits (B, T, vocab)
    model(ids, labels)                  -> ModelOutput(loss = main + lambda/D * sum(MTP) + balance)
    model.update_router_biases()        after each optimizer step (aux-loss-free balancing)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .attention import MLA, LatentCache, RMSNorm, RotaryEmbedding
from .config import ModelConfig
from .moe import MLP, MoE, Experts, Router


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = MLA(cfg, layer_id)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MoE(cfg) if cfg.is_moe_layer(layer_id) else MLP(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x, cos, sin, mask=None, cache=None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, D) -> (x (B, T, D), balance loss scalar)."""
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        h = self.post_attention_layernorm(x)
        if isinstance(self.mlp, MoE):
            h, balance = self.mlp(h)
        else:
            h, balance = self.mlp(h), x.new_zeros((), dtype=torch.float32)
        return x + h, balance


class MTPModule(nn.Module):
    """One multi-token-prediction depth. Names follow DeepSeek's released checkpoint, where it sits
    at `model.layers.{num_hidden_layers + k}` with `shared_head.norm` (our `norm`) and a copy of the
    shared embedding and head (not stored here: the Transformer's own are used)."""

    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        D = cfg.hidden_size
        self.enorm = RMSNorm(D, cfg.rms_norm_eps)  # for the embedding of token i + k
        self.hnorm = RMSNorm(D, cfg.rms_norm_eps)  # for the previous depth's hidden state
        self.eh_proj = nn.Linear(2 * D, D, bias=False)
        self.block = Block(cfg, layer_id)
        self.norm = RMSNorm(D, cfg.rms_norm_eps)  # before the shared head

    def forward(self, h_prev, emb, cos, sin) -> tuple[torch.Tensor, torch.Tensor]:
        """h_prev, emb (B, T', D) -> (h (B, T', D) un-normed, balance loss)."""
        # NOTE: [embedding ; hidden] order, as DeepSeek's checkpoint and vLLM's loader expect
        x = self.eh_proj(torch.cat([self.enorm(emb), self.hnorm(h_prev)], dim=-1))
        return self.block(x, cos, sin)


@dataclass
class ModelOutput:
    loss: torch.Tensor  # what to backpropagate
    lm_loss: torch.Tensor  # next-token cross-entropy of the main model
    mtp_losses: list[torch.Tensor] = field(default_factory=list)  # one per MTP depth
    balance_loss: torch.Tensor | None = None  # sequence-wise balance loss, summed over MoE layers


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        L = cfg.num_hidden_layers
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(L))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.mtp = nn.ModuleList(MTPModule(cfg, L + k) for k in range(cfg.num_nextn_predict_layers))
        self.rotary = RotaryEmbedding(cfg)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Normal(0, initializer_range) weights, unit norms, zero router biases. Also the entry
        point after building on the meta device and `to_empty()` (it refills the RoPE buffer)."""
        std = self.config.initializer_range
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=std)
            elif isinstance(m, RMSNorm):
                nn.init.ones_(m.weight)
            elif isinstance(m, Experts):
                for w in (m.w1, m.w2, m.w3):
                    nn.init.normal_(w, std=std)
            elif isinstance(m, Router):
                nn.init.normal_(m.weight, std=std)
                m.e_score_correction_bias.zero_()
                m.tokens_per_expert.zero_()
        self.rotary.reset_parameters()

    # forward -----------------------------------------------------------------------------------

    def _positions_and_mask(self, B: int, T: int, pad: torch.Tensor | None, cache: LatentCache | None):
        """Position ids (B|1, T) and attention mask (B, 1, T, S) or None (plain causal).
        Rows are left-padded by pad[b] slots; a padded query sees only itself (no NaN rows)."""
        device = self.embed_tokens.weight.device
        start = cache.length if cache is not None else 0
        if cache is not None:
            pad = cache.pad
        if pad is None:
            return torch.arange(start, start + T, device=device)[None], None
        q = torch.arange(start, start + T, device=device)  # absolute slots of the queries
        k = torch.arange(start + T, device=device)  # slots of the keys
        allowed = (k[None, None, :] <= q[None, :, None]) & (k[None, None, :] >= pad[:, None, None])
        allowed |= k[None, None, :] == q[None, :, None]  # (B, T, S)
        positions = (q[None, :] - pad[:, None]).clamp(min=0)  # (B, T)
        return positions, allowed[:, None]

    def hidden_states(self, input_ids: torch.Tensor, pad: torch.Tensor | None = None,
                      cache: LatentCache | None = None):
        """input_ids (B, T) -> (final-normed hidden (B, T, D), balance loss, cos, sin).
        pad (B,) left padding per row; cache: extend it by T slots (absorbed MLA)."""
        B, T = input_ids.shape
        if cache is not None and cache.length + T > cache.max_len:
            raise ValueError(f"cache holds {cache.max_len} positions; {cache.length} + {T} do not fit")
        positions, mask = self._positions_and_mask(B, T, pad, cache)
        cos, sin = self.rotary(positions)  # (B|1, T, rope/2)
        x = self.embed_tokens(input_ids)  # (B, T, D)
        balance = x.new_zeros((), dtype=torch.float32)
        # NOTE: tensors only when there is no mask or cache, as a CUDA-graphed block takes (training/graphs.py)
        extra = () if mask is None and cache is None else (mask, cache)
        for block in self.layers:
            x, b = block(x, cos, sin, *extra)
            balance = balance + b
        if cache is not None:
            cache.length += T
        return self.norm(x), balance, cos, sin

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None):
        """input_ids (B, T) -> logits (B, T, vocab) when labels is None; else a ModelOutput.
        labels (B, T): the next token at each position (-100: ignore), i.e. input shifted by one."""
        h, balance, cos, sin = self.hidden_states(input_ids)
        if labels is None:
            return self.lm_head(h)
        lm_loss = self._cross_entropy(h, labels)
        mtp_losses = []
        h_prev = h
        for k, module in enumerate(self.mtp, start=1):
            Tk = input_ids.shape[1] - k  # depth k predicts t_{i+k+1} from positions i < T - k
            if Tk <= 0:
                break
            emb = self.embed_tokens(input_ids[:, k:])  # (B, Tk, D): Emb(t_{i+k})
            h_prev, b = module(h_prev[:, :Tk], emb, cos[:, :Tk], sin[:, :Tk])
            balance = balance + b
            mtp_losses.append(self._cross_entropy(module.norm(h_prev), labels[:, k:]))
        loss = lm_loss + balance
        if mtp_losses:
            D = self.config.num_nextn_predict_layers
            loss = loss + self.config.mtp_loss_weight / D * torch.stack(mtp_losses).sum()
        return ModelOutput(loss=loss, lm_loss=lm_loss, mtp_losses=mtp_losses, balance_loss=balance)

    def _cross_entropy(self, h: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(h)  # (B, T', vocab)
        return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)

    @torch.no_grad()
    def next_token_logits(self, input_ids: torch.Tensor, pad: torch.Tensor | None = None,
                          cache: LatentCache | None = None) -> torch.Tensor:
        """Logits (B, vocab) float32 at the last position only (generation)."""
        h, _, _, _ = self.hidden_states(input_ids, pad, cache)
        return self.lm_head(h[:, -1]).float()

    def new_cache(self, batch: int, max_len: int, pad: torch.Tensor | None = None) -> LatentCache:
        w = self.embed_tokens.weight
        pad = torch.zeros(batch, dtype=torch.long) if pad is None else pad
        return LatentCache(self.config, batch, max_len, pad, w.dtype, w.device)

    def drop_mtp(self) -> None:
        """Inference needs only the main model: free the MTP modules."""
        self.mtp = nn.ModuleList()
        self.config = dataclasses.replace(self.config, num_nextn_predict_layers=0)

    # balancing ---------------------------------------------------------------------------------

    def moe_layers(self) -> dict[str, MoE]:
        return {name: m for name, m in self.named_modules() if isinstance(m, MoE)}

    def moe_load_stats(self) -> dict[str, dict]:
        """Per MoE layer: tokens per expert since the last bias update and max/mean (1.0 = even)."""
        out = {}
        for name, moe in self.moe_layers().items():
            load = moe.gate.tokens_per_expert.float()
            mean = load.mean().item()
            out[name] = {
                "tokens_per_expert": load.long().tolist(),
                "max_over_mean": load.max().item() / mean if mean > 0 else float("nan"),
            }
        return out

    @torch.no_grad()
    def update_router_biases(self) -> dict[str, float]:
        """Aux-loss-free balancing: call after each optimizer step. Sums the token counts over data
        parallel ranks (when torch.distributed is initialised), steps every router bias by
        gamma * sign(mean - load), resets the counters, and returns max/mean load per layer."""
        layers = self.moe_layers()
        if not layers:
            return {}
        loads = torch.stack([m.gate.tokens_per_expert for m in layers.values()])  # (n_moe, E)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(loads)
        stats = {}
        for (name, moe), load in zip(layers.items(), loads):
            load = moe.update_bias(load).float()
            stats[name] = (load.max() / load.mean()).item() if load.sum() > 0 else float("nan")
        return stats

    # interop -----------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path, **config_extra) -> Path:
        """Write config.json + model.safetensors that transformers loads as DeepseekV3ForCausalLM."""
        from .hf import save_pretrained

        return save_pretrained(self, directory, **config_extra)
