"""Packed token shards: the deduplicated corpus tokenized into flat binary arrays with an index.

datatrove's `DocumentTokenizer` writes, per task, `<rank>_<split>.ds` (token ids, uint16 below a 65,536
vocabulary, else uint32, each document followed by EOS, documents shuffled) with `.ds.index`
(document end offsets) beside it. Training packs the stream into windows of `sequence_length + 1`
tokens (inputs and shifted targets) with datatrove's `DatatroveFolderDataset`, which memory-maps
the files. Documents go to train or validation by a hash of their id, so the split is stable
across runs and every document lands in exactly one split.

`index.json` sums it up: splits, files, documents, tokens and packed sequences, tokens per source.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.tokens import DocumentTokenizer, TokensCounter

from training.corpus.executors import run_stage
from training.corpus.schema import documents_reader
from training.corpus.tokenizer import EOS
from training.settings import ExecutorConfig, ShardsConfig

SPLITS = ("train", "validation")


def split_of(doc_id: str, validation_fraction: float, seed: int) -> str:
    bucket = int(hashlib.sha1(f"{seed}:{doc_id}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "validation" if bucket < validation_fraction else "train"


class SelectSplit(PipelineStep):
    """Pass on the documents of one split (before any tokenization, so each is tokenized for one split only)."""

    type = "🔀 - ROUTER"
    name = "🔀 split"

    def __init__(self, split: str, validation_fraction: float, seed: int):
        super().__init__()
        self.split, self.validation_fraction, self.seed = split, validation_fraction, seed

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            if split_of(doc.id, self.validation_fraction, self.seed) == self.split:
                self.stat_update("documents")
                yield doc


class CountBySource(PipelineStep):
    """Documents and tokens per source (`token_count` comes from datatrove's TokensCounter)."""

    type = "📊 - STATS"
    name = "📊 per source"

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            source = doc.metadata.get("source", "")
            self.stat_update(f"documents/{source}")
            self.stat_update(f"tokens/{source}", value=doc.metadata.get("token_count", 0))
            yield doc


def make_shards(corpus_dir: Path, tokenizer_json: Path, out_dir: Path, cfg: ShardsConfig,
                executor: ExecutorConfig, logging_dir: Path) -> dict:
    """Tokenize `corpus_dir/documents` into `out_dir/{train,validation}/*.ds`; return the index."""
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(tokenizer_json)).get_vocab_size()
    index: dict = {"sequence_length": cfg.sequence_length, "tokenizer": str(tokenizer_json), "vocab_size": vocab,
                   "token_bytes": 2 if vocab < 2**16 else 4, "eos_token": EOS, "splits": {}}
    for split in SPLITS:
        pipeline = [
            documents_reader(corpus_dir),
            SelectSplit(split, cfg.validation_fraction, cfg.seed),
            # NOTE: a second tokenization of the split (DocumentTokenizer keeps no per-document source);
            # it buys the tokens-per-source figures and costs about as much as the shards themselves
            TokensCounter(str(tokenizer_json), count_eos_token=True),
            CountBySource(),
            DocumentTokenizer(str(out_dir / split), tokenizer_name_or_path=str(tokenizer_json), eos_token=EOS,
                              save_filename=split, seed=cfg.seed, shuffle_documents=True),
        ]
        stats = run_stage(pipeline, executor, logging_dir / split, job_name=f"shards_{split}")
        counts = stats.get(CountBySource.name, {})
        tokens = stats.get(DocumentTokenizer.name, {}).get("tokens", 0)
        index["splits"][split] = {
            "files": sorted(p.name for p in (out_dir / split).glob("*.ds")),
            "documents": stats.get(SelectSplit.name, {}).get("documents", 0),
            "tokens": tokens,
            # windows of sequence_length + 1 tokens (inputs plus the shifted target)
            "sequences": tokens // (cfg.sequence_length + 1),
            "tokens_per_source": {k.split("/", 1)[1]: v for k, v in counts.items() if k.startswith("tokens/")},
            "documents_per_source": {k.split("/", 1)[1]: v for k, v in counts.items() if k.startswith("documents/")},
        }
    (out_dir / "index.json").write_text(json.dumps(index, indent=2))
    return index


def packed_dataset(shards_dir: Path, split: str):
    """The memory-mapped, packed dataset of one split (items: `input_ids` of sequence_length + 1)."""
    from datatrove.utils.dataset import DatatroveFolderDataset

    index = json.loads((shards_dir / "index.json").read_text())
    return DatatroveFolderDataset(str(shards_dir / split), seq_len=index["sequence_length"],
                                  token_size=index["token_bytes"], recursive=False)
