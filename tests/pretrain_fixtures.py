"""Shared inputs for the training tests: a small real corpus turned into a tokenizer and token shards
with the pipeline's own functions (training/corpus), and the tiny profile cut down to seconds."""

from __future__ import annotations

import hashlib
import json
import sysconfig
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from training.corpus.schema import DOCUMENT_COLUMNS
from training.corpus.shards import make_shards
from training.corpus.tokenizer import train_tokenizer
from training.settings import ExecutorConfig, ShardsConfig, TokenizerConfig

# the tiny profile's model and schedule shape, fewer steps: about a minute of training on 2 cores,
# enough to get the validation loss under the unigram entropy (at about step 75 on this corpus)
FAST_PRETRAIN = {
    "pretrain.steps": 100, "pretrain.global_batch_size": 8, "pretrain.micro_batch_size": 4,
    "pretrain.warmup_steps": 5, "pretrain.eval_every": 50, "pretrain.checkpoint_every": 50,
    "pretrain.log_every": 10, "pretrain.eval_batches": 2, "pretrain.learning_rate": 0.003,
    "pretrain.min_lr_ratio": 0.3, "pretrain.threads": 1,
}

# what torch.distributed reads from the environment: a test that launches a trainer in a subprocess
# drops them, so that a rendezvous of the pytest process (an in-process SFT test) does not leak into it
RENDEZVOUS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def as_run_config(overrides: dict) -> dict[str, str]:
    """Dotted overrides as the `profile` resource takes them (YAML strings)."""
    return {k: str(v) for k, v in overrides.items()}


def stdlib_corpus(out_dir: Path, files: int = 120) -> Path:
    """The first `files` standard-library modules (by name) as a documents table."""
    paths = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:files]
    rows = {c: [] for c in DOCUMENT_COLUMNS}
    for p in paths:
        text = p.read_text(errors="replace")
        rows["id"].append(hashlib.sha1(text.encode()).hexdigest())
        rows["text"].append(text)
        rows["source"].append("stdlib")
        rows["uri"].append(str(p))
        rows["meta"].append(json.dumps({"language": "python"}))
    (out_dir / "documents").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(rows), out_dir / "documents" / "00000.parquet")
    return out_dir


def build_shards(home: Path, vocab_size: int = 2048, sequence_length: int = 256) -> tuple[Path, Path]:
    """$home/data/{tokenizer,pretraining_shards}, where the assets look for them."""
    data = home / "data"
    corpus = stdlib_corpus(data / "deduplicated_corpus")
    tok = train_tokenizer(corpus, data / "tokenizer", TokenizerConfig(vocab_size=vocab_size, max_training_documents=-1))
    shards = data / "pretraining_shards"
    make_shards(corpus, tok, shards, ShardsConfig(sequence_length=sequence_length, validation_fraction=0.1),
                ExecutorConfig(kind="local", tasks=1, workers=1), home / "logs" / "shards")
    return tok.parent, shards


def tokenizer_and_corpus(home: Path, vocab_size: int = 2048) -> tuple[Path, Path]:
    """$home/data/{deduplicated_corpus,tokenizer} from the stdlib corpus (a few seconds; no shards)."""
    corpus = stdlib_corpus(home / "data" / "deduplicated_corpus")
    tok = train_tokenizer(corpus, home / "data" / "tokenizer", TokenizerConfig(vocab_size=vocab_size, max_training_documents=-1))
    return corpus, tok.parent


def untrained_export(out: Path, model_cfg, tokenizer_dir: Path, seed: int = 0) -> Path:
    """A randomly initialised model of `model_cfg` saved as a Hugging Face export with the tokenizer files."""
    import shutil

    import torch

    from training.model import Transformer

    torch.manual_seed(seed)
    Transformer(model_cfg).save_pretrained(out)
    for f in Path(tokenizer_dir).iterdir():
        shutil.copy2(f, out / f.name)
    return out
