"""Generation speed with and without the latent cache, on a profile's model (random weights).

    python -m training.model.bench --profile tiny --batch 8 --prompt 64 --new 128

Prints tokens/s for both paths and the cache size; the greedy tokens of both paths must agree.
"""

from __future__ import annotations

import argparse
import time

import torch

from training.model.accounting import latent_cache_bytes_per_token, mha_cache_bytes_per_token
from training.model.generation import generate
from training.model.model import Transformer


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--new", type=int, default=128)
    # NOTE: tiny matmuls on a busy 2-core machine are 50x slower with 2 spinning OpenMP threads
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from training.settings import load_profile  # only the CLI needs profiles

    cfg = load_profile(args.profile).model
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    prompts = torch.randint(0, cfg.vocab_size, (args.batch, args.prompt)).tolist()
    result = {}
    tokens = {}
    for use_cache in (True, False):
        start = time.perf_counter()
        out = generate(model, prompts, args.new, temperature=0, use_cache=use_cache)
        seconds = time.perf_counter() - start
        tokens[use_cache] = out.tokens
        result["cache" if use_cache else "no_cache"] = out.lengths.sum().item() / seconds
    result["same_tokens"] = torch.equal(tokens[True], tokens[False])
    result["latent_bytes_per_token"] = latent_cache_bytes_per_token(cfg, 2)
    result["mha_bytes_per_token"] = mha_cache_bytes_per_token(cfg, 2)
    print(f"{args.profile}: batch {args.batch}, prompt {args.prompt}, {args.new} new tokens, "
          f"{torch.get_num_threads()} threads")
    print(f"  with latent cache: {result['cache']:8.1f} tokens/s")
    print(f"  recomputing:       {result['no_cache']:8.1f} tokens/s  (same greedy tokens: {result['same_tokens']})")
    print(f"  cache per token (bf16): {result['latent_bytes_per_token']} B latent vs "
          f"{result['mha_bytes_per_token']} B multi-head")
    return result


if __name__ == "__main__":
    main()
