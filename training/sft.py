"""Supervised fine-tuning on DeepSpeed: chats rendered by the tokenizer's template, loss on the
assistant's tokens only.

    python -m training.sft --config STAGE_CONFIG.json
    deepspeed --num_gpus 8 --module training.sft --config STAGE_CONFIG.json

Inputs (StageConfig.inputs): `model` (a Hugging Face export to start from, its tokenizer files
included; a MoE model or a dense student) and `data` (a folder holding sft.parquet, written by
training/sft_data.py). The stage's settings are the profile section named by StageConfig.stage
(r1_cold, r1_sft, a student), an SFTConfig.

Examples. Each row of sft.parquet becomes the chat [user: prompt, assistant: response], rendered by
the tokenizer's own chat template (transformers' `apply_chat_template`), which must agree with
training/tasks/format.py's `render_example`, the rendering GRPO and evaluation use:

    <|begin_of_text|><|user|>{prompt}<|assistant|>{response}<|end_of_text|>

The loss counts the assistant's tokens only: the response and its EOS. BOS, the role markers and
the prompt are context (label -100). A token is the assistant's when its character offset starts at
or after the end of `<|assistant|>`; that marker is a special token, so no token straddles the
boundary (checked). Examples whose response is not in the R1 format, that hold other special tokens,
or that are longer than max_length are skipped, each recorded with its reason in skipped.parquet.

Rows. With `packing` (the default) examples are laid end to end into rows of at most max_length
tokens, first-fit over a seeded shuffle. An example is never split across rows; the rest of a row
is padding. NOTE: packed examples see each other. training/model's training forward has plain
causal attention (no block-diagonal mask, no position reset per example), so the k-th example of a
row attends to the k-1 before it, and its positions start where the previous one ended. Each
example still opens with its own BOS and its loss covers only its own assistant tokens; what is
lost is the exact match with inference, where a prompt starts at position 0 with nothing before it.
Packed SFT commonly accepts that for throughput (examples here are a few dozen tokens, rows a few
hundred). `packing: false` avoids it: one example per row, rows of similar length batched together
(sorted by length within each window of 8 steps) and right-padded. That is exact (causal attention
never looks right; pads carry no loss) and costs more padding.

Loss. Token-weighted over the optimizer step: every assistant token of the global batch counts the
same whichever micro-batch or rank holds it (each micro-batch's mean is rescaled by its share of
the step's assistant tokens). The MoE balance loss (and the MTP losses, with `mtp`) are added as in
pretraining, and the router biases are updated after every optimizer step.

Schedule and data position. Steps = ceil(epochs x training rows / global batch), capped by
max_steps. Epoch e visits the rows in the order of a permutation seeded by (seed, e); step s takes
stream positions [s G, (s+1) G), so the last step may take a few rows of the next epoch. All of it
follows from the step counter: a restart loads the newest complete checkpoint (training/engine.py)
and goes on from its step. The checkpoint keeps a fingerprint of the examples and rows, and resuming
on other data fails.

Validation: a held-out slice of the examples (validation_fraction, the lowest hashes of their ids),
loss on assistant tokens, at the start, every eval_every steps and at the end. Logged from rank 0
to MLflow: loss, val_loss, lr, grad_norm, tokens_per_second (non-padding tokens, all ranks),
assistant_token_share (assistant / non-padding tokens), padding_share, epoch. At the end: the
Hugging Face export (training/export.py) registered in MLflow, summary.json and history.json in
output_dir, and the summary as Dagster metadata through Pipes.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from training import distributed
from training.corpus.tokenizer import EOS, PAD, REASONING, SPECIAL_TOKENS
from training.engine import (build_engine, complete_tags, load_latest, optimizer_step, resolved_precision,
                             save_checkpoint)
from training.entrypoint import run_stage, stage_main
from training.expert_parallel import apply_expert_parallel
from training.launch import StageConfig
from training.rewards.format import format_reward
from training.settings import SFTConfig
from training.tasks.format import render_example, render_prompt

SFT_COLUMNS = ("id", "prompt", "response")  # what the trainer reads of training/sft_data.py's schema
IGNORE = -100  # label of a token the loss does not count
SORT_WINDOW_STEPS = 8  # packing off: rows are sorted by length within windows of this many steps
OPEN_ROWS = 256  # packing: rows still searched for room (first-fit over the most recent ones)


@dataclass
class Example:
    id: str
    ids: list[int]  # BOS ... EOS
    mask: list[int]  # 1 where the token is the assistant's (the response and its EOS)


# ---------------------------------------------------------------------------------------------
# examples


def read_sft_table(data: Path) -> list[dict]:
    """The (id, prompt, response) rows of `data`/sft.parquet (or of `data` itself, a Parquet file)."""
    path = Path(data) / "sft.parquet" if Path(data).is_dir() else Path(data)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the `data` input must be a folder holding sft.parquet "
                                "(training/sft_data.py writes it)")
    table = pq.read_table(path)
    missing = [c for c in SFT_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"{path}: column(s) {missing} missing (it has {table.column_names}); expected "
                         "training/sft_data.py's schema")
    rows = table.select(list(SFT_COLUMNS)).to_pylist()
    if not rows:
        raise ValueError(f"{path}: no examples")
    repeated = [i for i, n in Counter(r["id"] for r in rows).items() if n > 1]
    if repeated:
        raise ValueError(f"{path}: {len(repeated)} ids appear more than once, e.g. {repeated[:3]}; ids must be unique")
    return rows


class ChatRenderer:
    """The tokenizer's chat template (what `AutoTokenizer.apply_chat_template` renders), checked
    against training/tasks/format.py on every example."""

    def __init__(self, tokenizer_dir: Path):
        from transformers import AutoTokenizer

        self.where = tokenizer_dir
        self.hf = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        if not getattr(self.hf, "chat_template", None):
            raise ValueError(f"{tokenizer_dir}: the tokenizer has no chat template (chat_template.jinja or "
                             "tokenizer_config.json); training/corpus/tokenizer.py saves one")

    def __call__(self, prompt: str, response: str) -> tuple[str, int]:
        """(the whole chat, the character offset where the assistant's text starts)."""
        chat = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        text = self.hf.apply_chat_template(chat, tokenize=False)
        expected = render_example(prompt, response)
        if text != expected:
            raise ValueError(f"{self.where}: the chat template renders {text[:160]!r} but training/tasks/format.py "
                             f"renders {expected[:160]!r}; they must agree (the model is sampled and evaluated on "
                             "format.py's rendering)")
        return text, len(render_prompt(prompt))


def skip_reason(prompt: str, response: str) -> str | None:
    """Why an example cannot be trained on, or None."""
    if not prompt.strip():
        return "empty_prompt"
    if format_reward(response) < 1.0:
        return "format"  # not <think>...</think> <answer>...</answer>
    other = [t for t in SPECIAL_TOKENS if t not in REASONING and (t in prompt or t in response)]
    if other:  # a role marker or EOS inside the text would move the assistant boundary
        return f"special_token:{other[0]}"
    return None


def encode_examples(rows: list[dict], tokenizer, render: ChatRenderer, max_length: int) -> tuple[list[Example], list[dict]]:
    """Tokenized examples with their assistant masks, and the skipped rows `{id, reason}`."""
    eos = tokenizer.token_to_id(EOS)
    skipped, kept, texts, starts = [], [], [], []
    for r in rows:
        reason = skip_reason(r["prompt"], r["response"])
        if reason:
            skipped.append({"id": r["id"], "reason": reason})
            continue
        text, start = render(r["prompt"], r["response"])
        kept.append(r)
        texts.append(text)
        starts.append(start)
    examples = []
    for r, enc, start in zip(kept, tokenizer.encode_batch(texts, add_special_tokens=False), starts):
        ids = enc.ids
        if len(ids) > max_length:
            skipped.append({"id": r["id"], "reason": f"too_long:{len(ids)}>{max_length}"})
            continue
        mask = [int(a >= start) for a, _ in enc.offsets]
        first = mask.index(1) if 1 in mask else -1
        if first < 1 or enc.offsets[first][0] != start or ids[-1] != eos:
            raise ValueError(f"example {r['id']}: no token starts where the assistant's text does (offset {start}), "
                             f"or the chat does not end with {EOS}; the tokenizer must keep the role markers as "
                             "special tokens (training/corpus/tokenizer.py)")
        examples.append(Example(r["id"], ids, mask))
    return examples, skipped


def split_validation(examples: list[Example], fraction: float) -> tuple[list[Example], list[Example]]:
    """(train, validation): the round(fraction x n) examples (at least one, if fraction > 0 and n > 1)
    with the lowest hashes of their ids. Stable: an example's side does not depend on the seed."""
    if fraction <= 0 or len(examples) < 2:
        return examples, []
    n_val = min(len(examples) - 1, max(1, round(fraction * len(examples))))
    key = {e.id: hashlib.blake2b(f"sft-validation:{e.id}".encode(), digest_size=8).digest() for e in examples}
    val = set(sorted(key, key=key.get)[:n_val])
    return [e for e in examples if e.id not in val], [e for e in examples if e.id in val]


def pack(lengths: list[int], max_length: int, seed: int) -> list[list[int]]:
    """Rows of example indices, each at most `max_length` tokens: first-fit over a seeded shuffle,
    searching the `OPEN_ROWS` most recent rows that still have room for the shortest example."""
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    shortest = min(lengths, default=0)
    rows: list[list[int]] = []
    room: list[int] = []
    open_rows: list[int] = []
    for i in order:
        row = next((r for r in open_rows if room[r] >= lengths[i]), None)
        if row is None:
            rows.append([])
            room.append(max_length)
            row = len(rows) - 1
            open_rows.append(row)
            if len(open_rows) > OPEN_ROWS:
                open_rows.pop(0)
        rows[row].append(i)
        room[row] -= lengths[i]
        if room[row] < shortest:
            open_rows.remove(row)
    return rows


def make_rows(examples: list[Example], cfg: SFTConfig) -> list[list[int]]:
    if cfg.packing:
        return pack([len(e.ids) for e in examples], cfg.max_length, cfg.seed)
    return [[i] for i in range(len(examples))]


def collate(examples: list[Example], rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input ids, labels), each (B, W - 1) for the longest row of W tokens; labels are the next
    token where it is the assistant's, else IGNORE (prompts, the next example's BOS, padding)."""
    tokens = [[t for i in row for t in examples[i].ids] for row in rows]
    masks = [[m for i in row for m in examples[i].mask] for row in rows]
    width = max(len(t) for t in tokens)
    inputs = torch.full((len(rows), width - 1), pad, dtype=torch.long)
    labels = torch.full((len(rows), width - 1), IGNORE, dtype=torch.long)
    for b, (t, m) in enumerate(zip(tokens, masks)):
        ids = torch.tensor(t)
        inputs[b, :len(t) - 1] = ids[:-1]
        labels[b, :len(t) - 1] = torch.where(torch.tensor(m[1:], dtype=torch.bool), ids[1:], IGNORE)
    return inputs, labels


def fingerprint(examples: list[Example], rows: list[list[int]], cfg: SFTConfig) -> str:
    h = hashlib.sha256(f"{cfg.max_length}:{cfg.packing}:{cfg.seed}".encode())
    for e in examples:
        h.update(f"{e.id}:{len(e.ids)};".encode())
    h.update(json.dumps(rows).encode())
    return h.hexdigest()[:16]


class RowStream:
    """The rows of every (step, micro-step, rank), a pure function of the step (see the docstring)."""

    def __init__(self, examples: list[Example], rows: list[list[int]], cfg: SFTConfig, rank: int, world_size: int):
        self.examples, self.rows, self.n = examples, rows, len(rows)
        self.global_batch, self.micro_batch = cfg.global_batch_size, cfg.micro_batch_size
        self.rank, self.world_size, self.seed = rank, world_size, cfg.seed
        self.accumulation = cfg.global_batch_size // (cfg.micro_batch_size * world_size)
        self.sort_window = 0 if cfg.packing else SORT_WINDOW_STEPS * cfg.global_batch_size
        self._epoch, self._order = -1, []

    def _row(self, position: int) -> list[int]:
        epoch, offset = divmod(position, self.n)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            order = torch.randperm(self.n, generator=g).tolist()
            if self.sort_window:
                size = lambda r: sum(len(self.examples[i].ids) for i in self.rows[r])  # noqa: E731
                order = [r for w in range(0, self.n, self.sort_window)
                         for r in sorted(order[w:w + self.sort_window], key=size)]
            self._epoch, self._order = epoch, order
        return self.rows[self._order[offset]]

    def micro_rows(self, step: int, micro: int) -> list[list[int]]:
        start = step * self.global_batch + (micro * self.world_size + self.rank) * self.micro_batch
        return [self._row(p) for p in range(start, start + self.micro_batch)]

    def steps_for(self, epochs: float) -> int:
        return max(1, math.ceil(epochs * self.n / self.global_batch))


# ---------------------------------------------------------------------------------------------
# training


@torch.no_grad()
def validation_loss(engine, examples: list[Example], rows: list[list[int]], cfg: SFTConfig, dist, pad: int) -> float | None:
    """Mean loss over the assistant tokens of the held-out rows (this rank's share, then all ranks)."""
    if not rows:
        return None
    batches = [rows[i:i + cfg.micro_batch_size] for i in range(0, len(rows), cfg.micro_batch_size)]
    mine = batches[dist.rank::dist.world_size]
    if cfg.eval_batches:
        mine = mine[:cfg.eval_batches]
    engine.eval()
    sums = torch.zeros(2, dtype=torch.float64, device=dist.device)  # (loss x tokens, tokens)
    for batch in mine:
        inputs, labels = collate(examples, batch, pad)
        n = (labels != IGNORE).sum()
        sums += torch.stack([engine(inputs.to(dist.device), labels.to(dist.device)).lm_loss.double() * n, n.double()])
    engine.train()
    if dist.world_size > 1:
        torch.distributed.all_reduce(sums)
    return (sums[0] / sums[1]).item()


def train(stage: StageConfig) -> dict:
    profile = stage.resolved_profile()
    cfg: SFTConfig = getattr(profile, stage.stage)
    if not isinstance(cfg, SFTConfig):
        raise ValueError(f"profile section {stage.stage!r} is a {type(cfg).__name__}, not an SFTConfig")
    out = Path(stage.output_dir)
    return run_stage(stage, cfg.threads, lambda dist, report: _train(stage, cfg, out, dist, report))


def _prepare(stage: StageConfig, cfg: SFTConfig, out: Path, report, is_main: bool) -> dict:
    """Read, render, tokenize, split and pack the examples; fail on inputs that cannot train."""
    from tokenizers import Tokenizer

    model_dir = Path(stage.inputs["model"])
    for f in ("config.json", "tokenizer.json"):
        if not (model_dir / f).is_file():
            raise FileNotFoundError(f"{model_dir / f} not found: the `model` input must be a Hugging Face export "
                                    "with its tokenizer files (training/export.py)")
    model_cfg = json.loads((model_dir / "config.json").read_text())
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    if tokenizer.get_vocab_size() > model_cfg["vocab_size"]:
        raise ValueError(f"{model_dir}: the tokenizer has {tokenizer.get_vocab_size()} tokens, the model's vocab_size "
                         f"is {model_cfg['vocab_size']}")
    if cfg.max_length > model_cfg["max_position_embeddings"]:
        raise ValueError(f"{stage.stage}.max_length ({cfg.max_length}) exceeds the model's max_position_embeddings "
                         f"({model_cfg['max_position_embeddings']}, {model_dir}/config.json)")
    rows = read_sft_table(Path(stage.inputs["data"]))
    examples, skipped = encode_examples(rows, tokenizer, ChatRenderer(model_dir), cfg.max_length)
    if is_main:
        pq.write_table(pa.Table.from_pylist(skipped, schema=pa.schema([("id", pa.string()), ("reason", pa.string())])),
                       out / "skipped.parquet")
    if skipped:
        report.info(f"skipped {len(skipped)} of {len(rows)} examples: "
                    f"{dict(Counter(s['reason'].split(':')[0] for s in skipped))} (skipped.parquet)")
    train_ex, val_ex = split_validation(examples, cfg.validation_fraction)
    if not train_ex:
        raise ValueError(f"{stage.inputs['data']}: no example left to train on ({len(rows)} rows, {len(skipped)} "
                         f"skipped: {dict(Counter(s['reason'].split(':')[0] for s in skipped))})")
    train_rows, val_rows = make_rows(train_ex, cfg), make_rows(val_ex, cfg)
    return {"model_dir": model_dir, "tokenizer": tokenizer, "rows_read": len(rows), "skipped": skipped,
            "train": train_ex, "val": val_ex, "train_rows": train_rows, "val_rows": val_rows,
            "fingerprint": fingerprint(train_ex + val_ex, train_rows, cfg)}


def _train(stage: StageConfig, cfg: SFTConfig, out: Path, dist, report) -> dict:
    from training.model import from_pretrained

    data = _prepare(stage, cfg, out, report, dist.is_main)
    model_dir, train_ex = data["model_dir"], data["train"]
    pad = data["tokenizer"].token_to_id(PAD)
    stream = RowStream(train_ex, data["train_rows"], cfg, dist.rank, dist.world_size)
    if cfg.global_batch_size % (cfg.micro_batch_size * dist.world_size):
        raise ValueError(f"{stage.stage}.global_batch_size ({cfg.global_batch_size}) must be a multiple of "
                         f"micro_batch_size x ranks ({cfg.micro_batch_size} x {dist.world_size})")
    steps = stream.steps_for(cfg.epochs)
    steps = min(steps, cfg.max_steps) if cfg.max_steps else steps
    engine_cfg = cfg.as_engine_config(steps)
    precision = resolved_precision(engine_cfg, dist.device)
    torch.manual_seed(cfg.seed)
    model = from_pretrained(model_dir, device="cpu", mtp=cfg.mtp)
    apply_expert_parallel(model, 1)  # the layout every trainer checkpoints in (a no-op for a dense model)
    model.to(dist.device)
    engine, _, scheduler = build_engine(model, engine_cfg, dist, precision)
    module = engine.module
    # fingerprinted by the settings and the inputs' files (training/launch.py): a new base model
    # starts afresh instead of resuming, or exporting, the run made from the old one
    ckpt_dir = stage.checkpoint_dir(stage.stage)
    client = load_latest(engine, ckpt_dir, dist)
    start = client["step"] if client else 0
    if client and client.get("data_fingerprint") != data["fingerprint"]:
        raise ValueError(f"{complete_tags(ckpt_dir)[-1]} was trained on other examples or rows (fingerprint "
                         f"{client.get('data_fingerprint')}, now {data['fingerprint']}); delete {ckpt_dir} to start over")
    history: list[dict] = client.get("history", []) if client else []
    tokens_seen = client.get("tokens", 0) if client else 0
    n_rows = len(data["train_rows"])
    report.params({**{f"{stage.stage}.{k}": v for k, v in vars(cfg).items()}, "precision": precision,
                   "world_size": dist.world_size, "steps_total": steps, "train_examples": len(train_ex),
                   "validation_examples": len(data["val"]), "train_rows": n_rows, "skipped": len(data["skipped"]),
                   "resumed_from_step": start, "base_model": str(model_dir), "data": stage.inputs["data"],
                   "dense": module.config.n_routed_experts == 0})
    report.info(f"SFT steps {start}..{steps}: {len(train_ex)} examples in {n_rows} rows "
                f"({'packed' if cfg.packing else 'one per row'}, max {cfg.max_length} tokens), "
                f"{len(data['val'])} held out, {stream.accumulation} micro-steps/step, {dist.device}, {precision}")

    def validate(step: int) -> None:
        val = validation_loss(engine, data["val"], data["val_rows"], cfg, dist, pad)
        if val is not None:
            report.metrics({"val_loss": val}, step=step)
            history.append({"step": step, "val_loss": val})
            report.info(f"step {step} validation loss {val:.4f}")

    if not client:
        validate(0)
    engine.train()  # NOTE: from_pretrained returns an eval-mode model; eval mode skips the router's load counts
    window_tokens, window_start = 0, time.time()
    for step in range(start, steps):
        done = step + 1
        logging_step = done % cfg.log_every == 0 or done == steps
        batches = [collate(train_ex, stream.micro_rows(step, m), pad) for m in range(stream.accumulation)]
        # (assistant tokens, non-padding input tokens, all input slots) of the step, over every rank
        counts = torch.tensor([sum(int((lab != IGNORE).sum()) for _, lab in batches),
                               sum(int((inp != pad).sum()) for inp, _ in batches),
                               sum(inp.numel() for inp, _ in batches)], dtype=torch.float64, device=dist.device)
        if dist.world_size > 1:
            torch.distributed.all_reduce(counts)
        per_micro = counts[0].item() / (stream.accumulation * dist.world_size)
        lm = torch.zeros((), dtype=torch.float64, device=dist.device)
        for micro, (inputs, labels) in enumerate(batches):
            n = int((labels != IGNORE).sum())
            output = engine(inputs.to(dist.device), labels.to(dist.device))
            # DeepSpeed divides by the accumulation steps and averages ranks: rescale this micro-batch's mean
            # so that the step's loss is the mean over all its assistant tokens
            engine.backward(output.lm_loss * (n / per_micro) + (output.loss - output.lm_loss))
            norm = optimizer_step(engine, module, measure_norm=micro == stream.accumulation - 1 and logging_step)
            if norm is not None:
                gnorm = norm
            lm += output.lm_loss.detach().double() * n
        module.update_router_biases()  # aux-loss-free balancing (nothing to do for a dense model)
        tokens_seen += int(counts[1].item())
        window_tokens += int(counts[1].item())
        if logging_step:
            if dist.world_size > 1:
                torch.distributed.all_reduce(lm)
            elapsed = time.time() - window_start
            metrics = {"loss": lm.item() / counts[0].item(), "lr": scheduler.get_last_lr()[0], "grad_norm": gnorm,
                       "tokens_per_second": window_tokens / max(elapsed, 1e-9), "tokens": tokens_seen,
                       "assistant_token_share": counts[0].item() / counts[1].item(),
                       "padding_share": 1 - counts[1].item() / counts[2].item(), "epoch": done * cfg.global_batch_size / n_rows}
            report.metrics(metrics, step=done)
            history.append({"step": done, **{k: metrics[k] for k in ("loss", "lr", "grad_norm", "tokens_per_second",
                                                                     "assistant_token_share", "padding_share")}})
            report.info(f"step {done}/{steps} loss {metrics['loss']:.4f} lr {metrics['lr']:.2e} "
                        f"gnorm {gnorm:.3f} {metrics['tokens_per_second']:,.0f} tok/s "
                        f"assistant {metrics['assistant_token_share']:.0%}")
            window_tokens, window_start = 0, time.time()
        if done % cfg.eval_every == 0 or done == steps:
            validate(done)
            window_start = time.time()  # validation time is not training throughput
        if done % cfg.checkpoint_every == 0 or done == steps:
            save_checkpoint(engine, ckpt_dir, done, dist, {"history": history, "tokens": tokens_seen,
                                                           "data_fingerprint": data["fingerprint"]},
                            cfg.keep_checkpoints)
            window_start = time.time()
    return _finish(stage, cfg, out, ckpt_dir, data, module, history, tokens_seen, steps, start, dist, report)


def _finish(stage, cfg: SFTConfig, out: Path, ckpt_dir: Path, data: dict, module, history, tokens_seen, steps,
            start, dist, report) -> dict:
    from training.export import export_model
    from training.pretrain import loss_curve_png

    export = export_model(module, module.config, data["model_dir"], out / "export")
    if not dist.is_main:
        distributed.barrier()
        return {}
    losses = [h for h in history if "loss" in h]
    vals = [h["val_loss"] for h in history if "val_loss" in h]
    speeds = [h["tokens_per_second"] for h in losses[-10:]]
    skipped = Counter(s["reason"].split(":")[0] for s in data["skipped"])
    summary = {
        "final_loss": losses[-1]["loss"] if losses else None,
        "validation_loss_start": vals[0] if vals else None,
        "validation_loss": vals[-1] if vals else None,
        "examples": len(data["train"]), "validation_examples": len(data["val"]), "rows": len(data["train_rows"]),
        "skipped": len(data["skipped"]), "skipped_by_reason": dict(skipped),
        "assistant_token_share": (sum(h["assistant_token_share"] for h in losses) / len(losses)) if losses else None,
        "padding_share": (sum(h["padding_share"] for h in losses) / len(losses)) if losses else None,
        "tokens": tokens_seen, "tokens_per_second": sum(speeds) / len(speeds) if speeds else None,
        "steps": steps, "epochs": steps * cfg.global_batch_size / len(data["train_rows"]), "packing": cfg.packing,
        "resumed_from_step": start, "dense": module.config.n_routed_experts == 0,
        "checkpoint": str(complete_tags(ckpt_dir)[-1]), "export": str(export),
        "loss_curve": str(loss_curve_png(history, out / "loss_curve.png")),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "history.json").write_text(json.dumps(history))
    if report.mlflow_run_id:
        from training.mlflow_model import log_and_register

        report.mlflow.log_artifact(summary["loss_curve"])
        name = stage.mlflow.get("registered_model", f"seekflow-{stage.stage.replace('_', '-')}")
        summary["registered_model"] = f"{name}/{log_and_register(export, name, stage.mlflow.get('aliases', []))}"
    report.materialization({k: v for k, v in summary.items() if v is not None})
    report.info(f"done: loss {summary['final_loss']}, validation loss {summary['validation_loss_start']} -> "
                f"{summary['validation_loss']}, {tokens_seen:,} tokens; export {export}")
    distributed.barrier()
    return summary


main = stage_main(train, "Seekflow SFT (DeepSpeed)")


if __name__ == "__main__":
    raise SystemExit(main())
