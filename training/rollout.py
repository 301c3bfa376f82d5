"""Rollouts for GRPO: G sampled responses per prompt, as padded tensors ready for the update.

Generation runs batched over MLA's latent cache (training/model/generation.py). Each sample is the
prompt's ids followed by the response's ids (its EOS included when it stopped); `Rollout` holds
them right-padded into one (N, L) batch, with a mask over the response tokens that the loss
counts, the sampling log-probabilities, and the decoded response text for the rewards.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from training.corpus.tokenizer import EOS, PAD
from training.model import generate
from training.tasks.format import render_prompt


@dataclass
class Rollout:
    ids: torch.Tensor  # (N, L) prompt + response, right-padded with PAD
    response_mask: torch.Tensor  # (N, L - 1) 1 where the *target* ids[:, 1:] is a response token
    sample_logprobs: torch.Tensor  # (N, L - 1) log-prob under the sampler, 0 outside responses
    texts: list[str]  # decoded responses (special tokens kept, EOS dropped)
    lengths: list[int]  # response tokens per sample (EOS counted when generated)
    stopped: list[bool]  # whether the sample ended with EOS
    seconds: float  # wall time of the generation
    generated_tokens: int


def encode_prompts(tokenizer, prompts: list[str]) -> list[list[int]]:
    return [e.ids for e in tokenizer.encode_batch([render_prompt(p) for p in prompts], add_special_tokens=False)]


@torch.no_grad()
def sample_groups(model, tokenizer, prompts: list[str], group_size: int, max_new_tokens: int,
                  temperature: float = 1.0, top_p: float = 1.0, generator: torch.Generator | None = None,
                  batch_size: int = 256) -> Rollout:
    """`group_size` samples of each prompt, grouped: rows [g * G, (g + 1) * G) answer prompt g."""
    eos, pad = tokenizer.token_to_id(EOS), tokenizer.token_to_id(PAD)
    encoded = encode_prompts(tokenizer, prompts)
    jobs = [ids for ids in encoded for _ in range(group_size)]
    started = time.time()
    tokens, logprobs = [], []
    for start in range(0, len(jobs), batch_size):
        out = generate(model, jobs[start:start + batch_size], max_new_tokens, temperature=temperature, top_p=top_p,
                       stop_token_ids=[eos], pad_token_id=pad, generator=generator)
        t, lp = out.as_lists()
        tokens += t
        logprobs += lp
    seconds = time.time() - started
    length = max(len(p) + len(t) for p, t in zip(jobs, tokens))
    N = len(jobs)
    device = model.embed_tokens.weight.device
    ids = torch.full((N, length), pad, dtype=torch.long)
    mask = torch.zeros(N, length - 1)
    sample_lp = torch.zeros(N, length - 1)
    texts, stopped = [], []
    for i, (p, t, lp) in enumerate(zip(jobs, tokens, logprobs)):
        ids[i, :len(p) + len(t)] = torch.tensor(p + t)
        # target position j predicts ids[j + 1]: the response occupies targets len(p) - 1 ...
        mask[i, len(p) - 1:len(p) - 1 + len(t)] = 1.0
        sample_lp[i, len(p) - 1:len(p) - 1 + len(t)] = torch.tensor(lp)
        ended = bool(t) and t[-1] == eos
        stopped.append(ended)
        texts.append(tokenizer.decode(t[:-1] if ended else t, skip_special_tokens=False))
    return Rollout(ids=ids.to(device), response_mask=mask.to(device), sample_logprobs=sample_lp.to(device),
                   texts=texts, lengths=[len(t) for t in tokens], stopped=stopped, seconds=seconds,
                   generated_tokens=sum(len(t) for t in tokens))
