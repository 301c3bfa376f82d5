"""Batched sampling over MLA's latent cache, returning tokens and their log-probabilities.

Prompts of different lengths are left-padded into one (B, P) batch; padded slots are masked out
and positions start at each row's first real token, so a row's tokens do not depend on the others.
One prefill fills the cache, then each step feeds one token per row. A row finishes at its first
stop token (kept in the output) or after `max_new_tokens`; finished rows emit `pad_token_id`.

Log-probabilities are those of the sampled token under softmax(logits / temperature), before top-k
and top-p truncation (greedy: temperature 1) -- what a GRPO trainer recomputes for the ratio
pi_theta / pi_old. `use_cache=False` recomputes the whole sequence every step (a reference and a
baseline for the speed-up; tests check both give the same greedy tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .model import Transformer


@dataclass
class Generation:
    tokens: torch.Tensor  # (B, N) generated ids, pad_token_id after a row finished
    logprobs: torch.Tensor  # (B, N) float32 log-prob of each generated token, 0 after finish
    lengths: torch.Tensor  # (B,) generated tokens per row, its stop token included

    def as_lists(self) -> tuple[list[list[int]], list[list[float]]]:
        toks = [t[:n].tolist() for t, n in zip(self.tokens, self.lengths)]
        lps = [lp[:n].tolist() for lp, n in zip(self.logprobs, self.lengths)]
        return toks, lps


def sample(logits: torch.Tensor, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
           generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (B, V) float32 -> (token (B,), its log-prob (B,)). temperature 0 means greedy."""
    if temperature <= 0:
        token = logits.argmax(dim=-1)
        return token, logits.log_softmax(-1).gather(1, token[:, None])[:, 0]
    logits = logits / temperature
    logp = logits.log_softmax(dim=-1)
    filtered = logits.clone()
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (B, 1)
        filtered[logits < kth] = float("-inf")
    if top_p < 1.0:
        probs, order = filtered.softmax(-1).sort(dim=-1, descending=True)
        drop = probs.cumsum(-1) - probs > top_p  # tokens outside the nucleus (the first is kept)
        filtered.scatter_(1, order, filtered.gather(1, order).masked_fill(drop, float("-inf")))
    token = torch.multinomial(filtered.softmax(-1), 1, generator=generator)[:, 0]
    return token, logp.gather(1, token[:, None])[:, 0]


@torch.no_grad()
def generate(model: Transformer, prompts: Sequence[Sequence[int]], max_new_tokens: int,
             temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
             stop_token_ids: Sequence[int] = (), pad_token_id: int = 0, use_cache: bool = True,
             generator: torch.Generator | None = None) -> Generation:
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate: every prompt needs at least one token")
    P = max(len(p) for p in prompts)
    if P + max_new_tokens > model.config.max_position_embeddings:
        raise ValueError(f"generate: longest prompt ({P}) + max_new_tokens ({max_new_tokens}) exceeds "
                         f"max_position_embeddings ({model.config.max_position_embeddings})")
    device = model.embed_tokens.weight.device
    B = len(prompts)
    pad = torch.tensor([P - len(p) for p in prompts], device=device)  # (B,) left padding
    ids = torch.full((B, P), pad_token_id, dtype=torch.long, device=device)
    for b, p in enumerate(prompts):
        ids[b, P - len(p):] = torch.as_tensor(list(p), dtype=torch.long, device=device)
    stops = torch.as_tensor(list(stop_token_ids), dtype=torch.long, device=device)

    was_training = model.training
    model.eval()  # NOTE: also keeps routers from counting generated tokens as training load
    tokens = torch.full((B, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    logprobs = torch.zeros(B, max_new_tokens, device=device)
    lengths = torch.zeros(B, dtype=torch.long, device=device)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    cache = model.new_cache(B, P + max_new_tokens, pad) if use_cache else None
    try:
        logits = model.next_token_logits(ids, pad=pad, cache=cache)  # prefill
        for t in range(max_new_tokens):
            tok, lp = sample(logits, temperature, top_p, top_k, generator)
            tok = tok.masked_fill(finished, pad_token_id)
            tokens[:, t], logprobs[:, t] = tok, lp.masked_fill(finished, 0.0)
            lengths += (~finished).long()
            finished |= torch.isin(tok, stops)
            if finished.all() or t == max_new_tokens - 1:
                break
            if use_cache:
                logits = model.next_token_logits(tok[:, None], cache=cache)
            else:
                ids = torch.cat([ids, tok[:, None]], dim=1)
                logits = model.next_token_logits(ids, pad=pad)
    finally:
        model.train(was_training)
    return Generation(tokens=tokens, logprobs=logprobs, lengths=lengths)
