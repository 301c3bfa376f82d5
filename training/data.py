"""A deterministic, resumable loader over the packed token shards.

The train stream is an endless sequence of epochs; epoch e visits every packed window once in the
order of a permutation seeded by (seed, e). Optimizer step s consumes stream positions
[s * G, (s + 1) * G) for a global batch of G windows, and micro-step m of rank r takes its own
contiguous slice of those. So the batch of any (step, micro-step, rank) is a pure function of the
step: resuming needs nothing but the step counter, and the same data is seen whatever the number
of ranks, as long as the global batch is the same.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from training.corpus.shards import packed_dataset


class ShardsError(ValueError):
    """Shards that cannot be trained on; the message names the path or field."""


def read_index(shards_dir: Path) -> dict:
    index_path = Path(shards_dir) / "index.json"
    if not index_path.is_file():
        raise ShardsError(f"no token shards at {shards_dir}: {index_path.name} is missing "
                          "(materialize `pretraining_shards` first)")
    index = json.loads(index_path.read_text())
    for split in ("train", "validation"):
        if index.get("splits", {}).get(split, {}).get("sequences", 0) < 1:
            raise ShardsError(f"{index_path}: split {split!r} has no packed sequence of "
                              f"{index['sequence_length'] + 1} tokens; add documents or lower shards.sequence_length")
    return index


class PackedBatches:
    def __init__(self, shards_dir: Path, split: str, global_batch: int, micro_batch: int,
                 rank: int, world_size: int, seed: int):
        self.dataset = packed_dataset(Path(shards_dir), split)
        self.n = len(self.dataset)
        if self.n == 0:
            raise ShardsError(f"{shards_dir}/{split}: no packed sequence")
        self.global_batch, self.micro_batch = global_batch, micro_batch
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.accumulation = global_batch // (micro_batch * world_size)
        self._epoch, self._perm = -1, None

    def _index(self, position: int) -> int:
        epoch, offset = divmod(position, self.n)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=g)
        return int(self._perm[offset])

    def batch(self, step: int, micro: int) -> torch.Tensor:
        """(micro_batch, sequence_length + 1) token ids for this rank at (step, micro-step)."""
        start = step * self.global_batch + (micro * self.world_size + self.rank) * self.micro_batch
        rows = [self.dataset[self._index(p)]["input_ids"] for p in range(start, start + self.micro_batch)]
        return torch.stack(rows).long()

    def epoch_of(self, step: int) -> float:
        return step * self.global_batch / self.n


def validation_batches(shards_dir: Path, micro_batch: int, batches: int, rank: int, world_size: int):
    """`batches` micro-batches of validation windows in all, spread evenly over the whole split (a
    fixed stride, so the sample stands for the split and is the same at every evaluation), dealt
    round-robin to the ranks: this rank's share. The sample does not depend on the number of ranks,
    so validation losses of runs on different world sizes compare. `batches` must be a multiple of
    `world_size` (check_inputs says so): expert parallelism needs all ranks in each forward."""
    dataset = packed_dataset(Path(shards_dir), "validation")
    n = len(dataset)
    total = batches * micro_batch
    picks = [(i * n) // total for i in range(total)] if total <= n else [i % n for i in range(total)]
    for b in range(rank, batches, world_size):
        start = b * micro_batch
        yield torch.stack([dataset[i]["input_ids"] for i in picks[start:start + micro_batch]]).long()


def unigram_entropy(shards_dir: Path, split: str = "validation") -> float:
    """Entropy (nats per token) of the split's empirical token distribution: the loss of the best
    model that ignores context. A trained language model must get below it."""
    index = read_index(shards_dir)
    dtype = {2: "<u2", 4: "<u4"}[index["token_bytes"]]
    import numpy as np

    counts = np.zeros(0, dtype=np.int64)
    for f in sorted((Path(shards_dir) / split).glob("*.ds")):
        c = np.bincount(np.fromfile(f, dtype=dtype))
        size = max(len(c), len(counts))
        counts = np.pad(counts, (0, size - len(counts))) + np.pad(c, (0, size - len(c)))
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())
