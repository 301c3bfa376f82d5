"""Verify MinHash candidate pairs before clustering (between datatrove's MinHash stages 2 and 3).

WHY: datatrove clusters every pair that collides in one bucket. With 14 buckets of 8 hashes a pair of
5-gram Jaccard s collides with probability 1 - (1 - s^8)^14: 98.8% at s = 0.85 (good), but still
5.3% at s = 0.5, so documents that merely share half their 5-grams get removed now and then. This
step re-scores each candidate pair on its whole signature (all 112 MinHash values; the share that
agree estimates the Jaccard with a standard error of about 0.05 near 0.5) and drops pairs under
`threshold`. Pairs are read from and written to datatrove's own `.dups` files (four uint32: file,
doc, file, doc), one output file per input file, so stage 3 runs unchanged.

Memory holds the signatures of the documents that appear in some pair, like stage 3's union-find.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from datatrove.data import DocumentsPipeline
from datatrove.io import DataFolderLike, get_datafolder
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.minhash import MinhashConfig

PAIR = np.dtype("<u4")


class VerifyMinhashPairs(PipelineStep):
    type = "🫂 - DEDUP"
    name = "🔎 verify MinHash pairs"

    def __init__(self, signatures: DataFolderLike, pairs_in: DataFolderLike, pairs_out: DataFolderLike,
                 config: MinhashConfig, threshold: float):
        super().__init__()
        self.signatures = get_datafolder(signatures)
        self.pairs_in = get_datafolder(pairs_in)
        self.pairs_out = get_datafolder(pairs_out)
        self.config = config
        self.threshold = threshold

    def _read_pairs(self) -> dict[str, np.ndarray]:
        pairs = {}
        for name in sorted(self.pairs_in.list_files(glob_pattern="*.dups")):
            with self.pairs_in.open(name, "rb") as f:
                pairs[name] = np.frombuffer(f.read(), dtype=PAIR).reshape(-1, 4)
        return pairs

    def _read_signatures(self, wanted: set[tuple[int, int]]) -> dict[tuple[int, int], np.ndarray]:
        c = self.config
        record = np.dtype([("h", c.hash_config.np_dtype, (c.hashes_per_bucket,)), ("doc", "<u4")])
        sigs: dict[tuple[int, int], np.ndarray] = defaultdict(
            lambda: np.zeros((c.num_buckets, c.hashes_per_bucket), dtype=c.hash_config.np_dtype))
        for bucket in range(c.num_buckets):
            # datatrove numbers sig files by their position in the sorted listing (the reader id)
            files = sorted(self.signatures.list_files(subdirectory=f"bucket_{bucket:03d}"))
            for reader_id, name in enumerate(files):
                with self.signatures.open(name, "rb") as f:
                    rows = np.frombuffer(f.read(), dtype=record)
                for h, doc in zip(rows["h"], rows["doc"]):
                    if (reader_id, int(doc)) in wanted:
                        sigs[(reader_id, int(doc))][bucket] = h
        return sigs

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        assert world_size == 1, "pair verification runs as a single task"
        with self.track_time():
            pairs = self._read_pairs()
            wanted = {(int(f), int(d)) for arr in pairs.values() for f, d in np.concatenate([arr[:, :2], arr[:, 2:]])}
            sigs = self._read_signatures(wanted)
            for name, arr in pairs.items():
                keep = np.ones(len(arr), dtype=bool)
                for i, (f1, d1, f2, d2) in enumerate(arr):
                    a, b = sigs.get((int(f1), int(d1))), sigs.get((int(f2), int(d2)))
                    if a is None or b is None:  # e.g. a match against an index: nothing to re-score
                        continue
                    agreement = float(np.mean(a == b))
                    keep[i] = agreement >= self.threshold
                self.stat_update("pairs", value=len(arr))
                self.stat_update("pairs_rejected", value=int((~keep).sum()))
                with self.pairs_out.open(name, "wb") as f:
                    f.write(arr[keep].astype(PAIR).tobytes())
        return
        yield  # a generator like every step, producing no documents
