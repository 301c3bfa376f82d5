"""A byte-level BPE tokenizer trained with `tokenizers` on the deduplicated corpus.

Byte-level BPE without a normalizer decodes back to exactly the input text, which the asset check
verifies. Special tokens cover the document boundaries, the chat roles and R1's reasoning format;
the directory is saved through transformers' `PreTrainedTokenizerFast`, so
`AutoTokenizer.from_pretrained(dir)` loads it with its chat template.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from training.settings import TokenizerConfig

BOS, EOS, PAD = "<|begin_of_text|>", "<|end_of_text|>", "<|pad|>"
ROLES = ("<|system|>", "<|user|>", "<|assistant|>")
REASONING = ("<think>", "</think>", "<answer>", "</answer>")
SPECIAL_TOKENS = [BOS, EOS, PAD, *ROLES, *REASONING]

# Role markers open a turn; the assistant's turn ends with EOS, which the SFT loss mask relies on.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def _documents(corpus_dir: Path, limit: int) -> Iterator[str]:
    """Texts of the kept documents; a hash-chosen, stable sample when `limit` is set."""
    files = sorted((corpus_dir / "documents").glob("*.parquet"))
    if limit < 0:
        for f in files:
            for batch in pq.ParquetFile(f).iter_batches(columns=["text"], batch_size=1000):
                yield from batch.column("text").to_pylist()
        return
    ids = [(hashlib.sha1(i.encode()).hexdigest(), f, n) for f in files
           for n, i in enumerate(pq.read_table(f, columns=["id"]).column("id").to_pylist())]
    chosen = {(f, n) for _, f, n in sorted(ids)[:limit]}
    for f in files:
        texts = pq.read_table(f, columns=["text"]).column("text").to_pylist()
        yield from (t for n, t in enumerate(texts) if (f, n) in chosen)


def train_tokenizer(corpus_dir: Path, out_dir: Path, cfg: TokenizerConfig) -> Path:
    """Train on `corpus_dir/documents` and save `tokenizer.json` (+ transformers files) in `out_dir`."""
    from transformers import PreTrainedTokenizerFast

    if cfg.vocab_size <= len(SPECIAL_TOKENS) + 256:
        raise ValueError(f"tokenizer.vocab_size is {cfg.vocab_size}; it must exceed 256 bytes + {len(SPECIAL_TOKENS)} special tokens")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte: nothing is ever unknown
        show_progress=False,
    )
    # NOTE: special tokens are cut out of the training text: they always encode to their own ids, so
    # merges learned across them (`.<|`, `|><|`) could never be used and would waste vocabulary
    special = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS))
    texts = (special.sub(" ", text) for text in _documents(corpus_dir, cfg.max_training_documents))
    tok.train_from_iterator(texts, trainer=trainer)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        additional_special_tokens=[*ROLES, *REASONING],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out_dir))
    return out_dir / "tokenizer.json"


def round_trip_failures(tokenizer_path: Path, texts: list[str]) -> list[int]:
    """Indices of texts that do not decode back to themselves exactly."""
    tok = Tokenizer.from_file(str(tokenizer_path))
    encoded = tok.encode_batch(texts, add_special_tokens=False)
    return [i for i, (t, e) in enumerate(zip(texts, encoded)) if tok.decode(e.ids, skip_special_tokens=False) != t]
