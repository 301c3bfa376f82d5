"""Profiles and paths: one YAML per scale in infra/profiles/, loaded into typed dataclasses.

A profile is data: every knob a stage reads lives in one of the sections below, with its default
and unit. `SEEKFLOW_PROFILE` picks the profile (default `tiny`); Dagster run config overrides single
fields by dotted name (`web_filters.gopher_quality.min_doc_words: 30`). Anything unknown or of the
wrong type fails before work starts, with the file and field named and what is accepted.

`SEEKFLOW_HOME` (default `.seekflow/` at the repo root) holds every output: the Dagster instance,
data, checkpoints and the MLflow store.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from training.model.config import ModelConfig, ModelConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]
PROFILES_DIR = REPO_ROOT / "infra" / "profiles"
DEFAULT_PROFILE = "tiny"


class ProfileError(ValueError):
    """A profile file or override that cannot be used; the message names the file and field."""


# ---------------------------------------------------------------------------------------------
# sections


# the generated task families (training/tasks/build.py's FAMILIES, which checks it matches)
TASK_FAMILIES = ("arithmetic", "linear", "countdown", "word", "code")


def _check_families(names: list[str], where: str) -> None:
    unknown = sorted(set(names) - set(TASK_FAMILIES))
    if unknown:
        raise ProfileError(f"{where} names unknown families {unknown}; accepted: {sorted(TASK_FAMILIES)}")


@dataclass
class WorkedExamplesConfig:
    """The `worked-examples` built-in web source: generated tasks with worked solutions, as chats.

    Drawn only from the train side of the tasks split (training/tasks), so no held-out instance
    ever reaches the corpus.
    """

    examples: int = 16_000  # total worked examples; 0 makes the source empty
    examples_per_document: int = 16
    seed: int = 1  # independent of tasks.seed: which train instances, phrasings and order
    families: list[str] = field(default_factory=lambda: ["arithmetic", "linear", "countdown", "word", "code"])
    difficulties: list[int] = field(default_factory=lambda: [1, 2, 3])
    # the split's held-out share; null takes tasks.heldout_share (the Profile fills it in), and any
    # other value must equal it: one split for the tasks and the corpus
    heldout_share: float | None = None
    # the share of examples written as solutions are written on the web: the same working, then
    # "Answer: 13" on a line of its own, without the think and answer tags (training/tasks/worked.py)
    untagged_share: float = 0.0

    def __post_init__(self) -> None:
        _check_families(self.families, "corpus.worked_examples.families")
        if not 0.0 <= self.untagged_share <= 1.0:
            raise ProfileError(f"corpus.worked_examples.untagged_share must be in [0, 1] (got {self.untagged_share})")
        if self.examples_per_document < 1 or not self.difficulties or min(self.difficulties) < 1:
            raise ProfileError("corpus.worked_examples: examples_per_document must be >= 1 and difficulties "
                               f"a list of levels >= 1 (got {self.examples_per_document}, {self.difficulties})")


@dataclass
class CorpusConfig:
    # documents read per source entry (a path, glob or built-in source); -1 reads everything
    max_documents_per_source: int = -1
    # a document longer than this (characters) is excluded as `too_large` before any filter runs;
    # it guards the filters against one enormous line or file
    max_document_chars: int = 1_000_000
    # files larger than this (bytes) are excluded unread, as `file_too_large`
    max_file_bytes: int = 50_000_000
    # plain-text documentation files under a directory source are matched by these suffixes, and
    # extension-less files by these names (Debian's `copyright`, `README`, ...)
    text_suffixes: list[str] = field(default_factory=lambda: [".txt", ".md", ".rst", ".text"])
    text_filenames: list[str] = field(
        default_factory=lambda: ["copyright", "README", "NEWS", "AUTHORS", "THANKS", "TODO"]
    )
    # code files are matched by extension; the value is the language recorded with each document
    code_extensions: dict[str, str] = field(
        default_factory=lambda: {
            ".py": "python", ".pyi": "python", ".c": "c", ".h": "c", ".cc": "cpp", ".cpp": "cpp",
            ".hpp": "cpp", ".rs": "rust", ".go": "go", ".js": "javascript", ".ts": "typescript",
            ".java": "java", ".sh": "shell", ".rb": "ruby", ".lua": "lua", ".sql": "sql",
        }
    )
    # path parts never read as code (vendored environments, caches, build trees)
    code_exclude_dirs: list[str] = field(
        default_factory=lambda: ["site-packages", "__pycache__", ".git", "node_modules", ".venv"]
    )
    # per-document timeout (seconds) for HTML to text extraction
    html_extraction_timeout: float = 5.0
    # the `worked-examples` built-in source (training/tasks/worked.py)
    worked_examples: WorkedExamplesConfig = field(default_factory=WorkedExamplesConfig)


@dataclass
class GopherQualityConfig:  # datatrove GopherQualityFilter
    min_doc_words: int = 50
    max_doc_words: int = 100_000
    min_avg_word_length: int = 3
    max_avg_word_length: int = 10
    max_symbol_word_ratio: float = 0.1
    max_bullet_lines_ratio: float = 0.9
    max_ellipsis_lines_ratio: float = 0.3
    max_non_alpha_words_ratio: float = 0.8
    min_stop_words: int = 2


@dataclass
class GopherRepetitionConfig:  # datatrove GopherRepetitionFilter
    dup_line_frac: float = 0.3
    dup_para_frac: float = 0.3
    dup_line_char_frac: float = 0.2
    dup_para_char_frac: float = 0.2


@dataclass
class C4QualityConfig:  # datatrove C4QualityFilter (it also removes bad lines, not only documents)
    filter_no_terminal_punct: bool = True
    min_num_sentences: int = 5  # -1 disables
    min_words_per_line: int = 3  # -1 disables
    max_word_length: int = 1000  # -1 disables
    filter_lorem_ipsum: bool = True
    filter_javascript: bool = True
    filter_curly_bracket: bool = True
    filter_policy: bool = True


@dataclass
class FineWebQualityConfig:  # datatrove FineWebQualityFilter
    line_punct_thr: float = 0.12
    short_line_thr: float = 0.67
    short_line_length: int = 30
    char_duplicates_ratio: float = 0.01
    new_line_ratio: float = 0.3


@dataclass
class WebFiltersConfig:
    # each filter runs when enabled; its thresholds are datatrove's own parameter names
    gopher_quality_enabled: bool = True
    gopher_quality: GopherQualityConfig = field(default_factory=GopherQualityConfig)
    gopher_repetition_enabled: bool = True
    gopher_repetition: GopherRepetitionConfig = field(default_factory=GopherRepetitionConfig)
    c4_enabled: bool = True
    c4: C4QualityConfig = field(default_factory=C4QualityConfig)
    fineweb_enabled: bool = True
    fineweb: FineWebQualityConfig = field(default_factory=FineWebQualityConfig)
    # documents of these sources pass every quality filter above (counted as `trusted_source` in
    # each filter's stats) but are still deduplicated: generated text we wrote on purpose, which
    # the prose heuristics would mangle (C4 drops lines without terminal punctuation)
    trusted_sources: list[str] = field(default_factory=lambda: ["worked-examples"])


@dataclass
class CodeFiltersConfig:
    min_chars: int = 100  # shorter files carry too little code to learn from
    max_chars: int = 200_000
    max_line_length: int = 1000  # minified or data blobs
    max_mean_line_length: float = 100.0
    min_alphanumeric_fraction: float = 0.25
    # a marker in the first lines of a file means it was generated, not written
    autogenerated_markers: list[str] = field(
        default_factory=lambda: [
            "auto-generated", "autogenerated", "automatically generated", "generated by",
            "do not edit",
        ]
    )
    autogenerated_header_lines: int = 5


@dataclass
class MinhashSettings:  # datatrove MinhashConfig
    n_grams: int = 5
    num_buckets: int = 14
    hashes_per_bucket: int = 8
    seed: int = 1
    # candidate pairs whose full signatures agree on less than this share are not duplicates
    # (training/corpus/minhash_verify.py says why); 0 clusters every bucket collision, as datatrove does
    verify_threshold: float = 0.7


@dataclass
class DedupConfig:
    minhash: MinhashSettings = field(default_factory=MinhashSettings)


@dataclass
class TokenizerConfig:
    vocab_size: int = 32_768
    min_frequency: int = 2
    # documents sampled to train the BPE merges; -1 uses the whole corpus
    max_training_documents: int = -1


@dataclass
class ShardsConfig:
    sequence_length: int = 2048
    # share of documents (by a hash of their id, so stable across runs) held out for validation
    validation_fraction: float = 0.01
    seed: int = 0


@dataclass
class UserTaskSet:
    """A user's own task file (JSONL): GSM8K/MATH-style `question` + `answer`, or code `prompt` +
    `tests` + `entry_point`."""

    path: str
    # `heldout` or `train` puts every task of the file on that side; `hash` splits by tasks.heldout_share
    split: str = "heldout"
    family: str = ""  # reported family; empty: the file's name without suffixes

    def __post_init__(self) -> None:
        if self.split not in ("heldout", "train", "hash"):
            raise ProfileError(f"tasks.user_sets split is {self.split!r} for {self.path}; accepted: 'heldout', 'train', 'hash'")


@dataclass
class TasksConfig:
    """Verifiable reasoning tasks (training/tasks): generated families and the user's own sets."""

    # tasks per difficulty level for each generated family (train + held-out); 0 or absent: none
    counts: dict[str, int] = field(
        default_factory=lambda: {"arithmetic": 200, "linear": 200, "countdown": 200, "word": 200, "code": 60})
    difficulties: list[int] = field(default_factory=lambda: [1, 2, 3])
    # share of the template-instance space held out (by a hash of the instance), hence of each
    # (family, difficulty)'s tasks; the corpus's worked examples use the same split
    heldout_share: float = 0.1
    seed: int = 0
    # a generated or user task longer than this (characters) is excluded as too long
    max_prompt_chars: int = 200
    max_solution_chars: int = 400
    user_sets: list[UserTaskSet] = field(default_factory=list)
    # decontamination against the corpus (training/tasks/decontaminate.py says why these): prompts
    # of at most `whole_prompt_tokens` words must not appear whole; longer ones share no n-gram
    decontamination_n: int = 13
    decontamination_whole_prompt_tokens: int = 48
    # the reasoning_tasks asset fails above this share of contaminated held-out tasks
    max_contaminated_share: float = 0.01

    def __post_init__(self) -> None:
        if not 0.0 < self.heldout_share < 1.0:
            raise ProfileError(f"tasks.heldout_share is {self.heldout_share}; accepted: a share strictly between 0 and 1")
        if not self.difficulties or min(self.difficulties) < 1:
            raise ProfileError(f"tasks.difficulties is {self.difficulties}; accepted: a list of levels >= 1")
        _check_families(list(self.counts), "tasks.counts")


@dataclass
class ExecutorConfig:
    # where datatrove runs each data stage: `local` (processes on this machine), `slurm`, `ray`
    kind: str = "local"
    tasks: int = 2  # shards of the input; the same on every executor so outputs line up
    workers: int = 2  # concurrent tasks on `local`
    # slurm
    slurm_partition: str = ""
    slurm_time: str = "04:00:00"
    slurm_cpus_per_task: int = 4
    slurm_mem_per_cpu_gb: int = 2
    # ray
    ray_cpus_per_task: int = 1

    def __post_init__(self) -> None:
        if self.kind not in ("local", "slurm", "ray"):
            raise ProfileError(f"executor.kind is {self.kind!r}; accepted: 'local', 'slurm', 'ray'")
        if self.tasks < 1 or self.workers < 1:
            raise ProfileError(f"executor.tasks and executor.workers must be >= 1 (got {self.tasks}, {self.workers})")


@dataclass
class PretrainConfig:
    """The v3_base trainer (training/pretrain.py): schedule, batch, DeepSpeed and parallelism."""

    steps: int = 1000  # optimizer steps
    global_batch_size: int = 64  # sequences per optimizer step, over all ranks and micro-steps
    micro_batch_size: int = 8  # sequences per rank per forward; accumulation = global / (micro x data ranks)
    learning_rate: float = 3e-4  # peak
    min_lr_ratio: float = 0.1  # the schedule ends at learning_rate x this
    warmup_steps: int = 100
    schedule: str = "cosine"  # "cosine" or "wsd" (warmup, stable, then linear decay over decay_fraction)
    decay_fraction: float = 0.2  # wsd: share of the steps spent decaying
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    grad_clip: float = 1.0  # global gradient norm
    zero_stage: int = 0  # DeepSpeed ZeRO stage (infra/deepspeed/zero<stage>.json)
    precision: str = "auto"  # "auto" (bf16 on GPU, fp32 on CPU), "bf16", "fp32", "fp8" (kernels/, GPU)
    ep_size: int = 1  # expert-parallel ranks; must divide the world size and n_routed_experts
    activation_checkpointing: bool = False  # refused by the trainer: a recomputed MoE forward counts tokens twice
    # GPU speed (no effect on the CPU path's numerics): torch.compile each transformer block and the
    # loss head (in FP8 too: its layers are custom ops inside each block's graph, kernels/fp8_linear.py);
    # SDPA kernel for MLA ("auto": PyTorch's choice; "flash": v zero-padded to the q/k head dim;
    # "cudnn", "efficient": training/model/attention.py)
    compile: bool = False
    attention: str = "auto"
    # CUDA graphs: each transformer block's forward and backward captured once and replayed every
    # micro-step (training/graphs.py), so Python no longer queues their kernels one by one. Pays where
    # the step is host-bound: narrow models, FP8 (BENCHMARKS.md). With `compile`, the compiled blocks
    # are captured. Needs a CUDA device, ZeRO stage <= 2 and ep_size 1 (the all-to-all's splits are
    # read on the host).
    cuda_graphs: bool = False
    profile_step: int = 0  # > 0: torch.profiler over steps profile_step and +1 -> profile_rank<r>.txt
    eval_every: int = 50  # steps between validation passes
    eval_batches: int = 8  # micro-batches per validation pass, over all ranks (a multiple of the rank count)
    # steps between checkpoints (and one at the end, with the Hugging Face export); 0: no checkpoint and
    # no export, for runs read for their losses alone (sweeps, benchmarks/run_fp8_gap.sh); the assets,
    # whose output is the weights, refuse 0
    checkpoint_every: int = 100
    keep_checkpoints: int = 2  # most recent checkpoints kept on disk
    log_every: int = 10  # steps between metric logs
    seed: int = 1234
    threads: int = 0  # torch CPU threads per rank; 0 leaves torch's default

    def __post_init__(self) -> None:
        checks = [
            (self.schedule in ("cosine", "wsd"), f"pretrain.schedule is {self.schedule!r}; accepted: 'cosine', 'wsd'"),
            (self.precision in ("auto", "bf16", "fp32", "fp8"),
             f"pretrain.precision is {self.precision!r}; accepted: 'auto', 'bf16', 'fp32', 'fp8'"),
            (self.zero_stage in (0, 1, 2, 3), f"pretrain.zero_stage is {self.zero_stage}; accepted: 0, 1, 2, 3"),
            (self.steps >= 1 and self.micro_batch_size >= 1 and self.global_batch_size >= 1,
             "pretrain.steps, pretrain.micro_batch_size and pretrain.global_batch_size must be >= 1"),
            (self.global_batch_size % self.micro_batch_size == 0,
             f"pretrain.global_batch_size ({self.global_batch_size}) must be a multiple of "
             f"pretrain.micro_batch_size ({self.micro_batch_size})"),
            (self.ep_size >= 1, f"pretrain.ep_size is {self.ep_size}; must be >= 1"),
            (self.attention in ("auto", "flash", "cudnn", "efficient"),
             f"pretrain.attention is {self.attention!r}; accepted: 'auto', 'flash', 'cudnn', 'efficient'"),
            (0 <= self.warmup_steps, f"pretrain.warmup_steps is {self.warmup_steps}; must be >= 0"),
            (self.checkpoint_every >= 0,
             f"pretrain.checkpoint_every is {self.checkpoint_every}; must be >= 0 (0: no checkpoint, no export)"),
            *[(not self.cuda_graphs or ok, f"pretrain.cuda_graphs needs {need}") for ok, need in (
                (self.zero_stage <= 2, f"pretrain.zero_stage <= 2, got {self.zero_stage} (stage 3 gathers "
                                       "parameters in hooks)"),
                (self.ep_size == 1, f"pretrain.ep_size 1, got {self.ep_size} (the all-to-all reads its splits "
                                    "on the host)"))],
        ]
        errors = [msg for ok, msg in checks if not ok]
        if errors:
            raise ProfileError("; ".join(errors))


@dataclass
class LaunchConfig:
    """Where training processes run (training/launch.py): this machine, Slurm or Kubernetes."""

    kind: str = "local"  # "local", "slurm" or "k8s"
    launcher: str = "auto"  # "auto" (one process, or deepspeed when nproc_per_node > 1), "deepspeed", "torchrun"
    nodes: int = 1
    nproc_per_node: int = 1  # processes (GPUs) per node
    master_port: int = 29500
    # slurm: the sbatch script is rendered from infra/slurm/train.sbatch
    slurm_partition: str = ""
    slurm_account: str = ""
    slurm_time: str = "24:00:00"
    slurm_cpus_per_task: int = 16
    slurm_extra: list[str] = field(default_factory=list)  # more `#SBATCH` lines, e.g. "--qos=high"
    # k8s: the pod is rendered from infra/k8s/train-pod.yaml and run through Dagster Pipes
    k8s_image: str = "seekflow:latest"
    k8s_namespace: str = "default"
    k8s_gpus: int = 1
    k8s_volume_claim: str = ""  # a PVC mounted at SEEKFLOW_HOME (shards in, checkpoints out)

    def __post_init__(self) -> None:
        if self.kind not in ("local", "slurm", "k8s"):
            raise ProfileError(f"launch.kind is {self.kind!r}; accepted: 'local', 'slurm', 'k8s'")
        if self.launcher not in ("auto", "deepspeed", "torchrun"):
            raise ProfileError(f"launch.launcher is {self.launcher!r}; accepted: 'auto', 'deepspeed', 'torchrun'")
        if self.nodes < 1 or self.nproc_per_node < 1:
            raise ProfileError(f"launch.nodes and launch.nproc_per_node must be >= 1 (got {self.nodes}, {self.nproc_per_node})")

    @property
    def world_size(self) -> int:
        return self.nodes * self.nproc_per_node


@dataclass
class EvaluationConfig:
    """Held-out evaluation of every model (training/evaluate.py's EvalConfig, R1's sampling settings)."""

    k: int = 4  # samples per task; pass@1 is their mean
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 256
    batch_size: int = 64
    limit: int = 0  # held-out tasks evaluated (by id order); 0: all
    seed: int = 0
    sandbox_workers: int = 2
    confidence: float = 0.95


@dataclass
class GRPOConfig:
    """One GRPO stage (training/grpo.py): r1_zero here; the later R1 stages reuse the same fields."""

    steps: int = 100  # rollout batches; each gives updates_per_batch optimizer steps
    prompts_per_step: int = 16  # questions per batch
    group_size: int = 8  # G responses sampled per question
    max_new_tokens: int = 256
    temperature: float = 1.0  # sampling for training rollouts (R1: 1.0)
    top_p: float = 1.0
    learning_rate: float = 3e-6  # constant after warmup, as in R1
    warmup_steps: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    clip_eps: float = 0.2  # epsilon of the clipped ratio
    clip_eps_high: float = 0.0  # upper epsilon; 0 = same as clip_eps
    kl_beta: float = 0.001  # beta of the k3 KL to the frozen reference (R1: 0.001)
    loss_aggregation: str = "sequence"  # "sequence" (the paper: per response, then mean) or "token"
    updates_per_batch: int = 1  # mu: optimizer steps per rollout batch (1: on-policy)
    micro_batch_size: int = 16  # sequences per forward in the update
    rewards: list[str] = field(default_factory=lambda: ["accuracy", "format"])
    reward_weights: dict[str, float] = field(default_factory=dict)  # default weight 1 per component
    language: str = "latin"  # target script of the language-consistency reward
    families: list[str] = field(default_factory=list)  # train tasks from these families; empty: all
    difficulties: list[int] = field(default_factory=list)  # and these levels; empty: all
    # share of each batch's prompts drawn from general (non-reasoning) prompts, when the stage has them
    # (the final `r1` stage: rejection_sampled_sft's general rows, scored by a rule proxy)
    general_fraction: float = 0.25
    checkpoint_every: int = 10
    keep_checkpoints: int = 2
    log_every: int = 1
    seed: int = 0
    sandbox_workers: int = 2
    zero_stage: int = 0
    precision: str = "auto"
    threads: int = 0

    def __post_init__(self) -> None:
        errors = []
        if self.loss_aggregation not in ("sequence", "token"):
            errors.append(f"loss_aggregation is {self.loss_aggregation!r}; accepted: 'sequence', 'token'")
        if self.group_size < 2:
            errors.append(f"group_size is {self.group_size}; GRPO compares responses within a group, so >= 2")
        if (self.prompts_per_step * self.group_size) % self.micro_batch_size:
            errors.append(f"prompts_per_step x group_size ({self.prompts_per_step} x {self.group_size}) must be a "
                          f"multiple of micro_batch_size ({self.micro_batch_size})")
        unknown = sorted(set(self.rewards) - {"accuracy", "format", "language"})
        if unknown:
            errors.append(f"rewards {unknown} unknown; accepted: accuracy, format, language")
        if errors:
            raise ProfileError("; ".join(errors))

    def as_engine_config(self) -> "PretrainConfig":
        """The DeepSpeed-facing subset, in the shape training/engine.py takes (constant LR after warmup)."""
        return PretrainConfig(
            steps=self.steps * self.updates_per_batch, global_batch_size=self.prompts_per_step * self.group_size,
            micro_batch_size=self.micro_batch_size, learning_rate=self.learning_rate, min_lr_ratio=1.0,
            warmup_steps=self.warmup_steps, weight_decay=self.weight_decay, adam_beta2=0.99,
            grad_clip=self.grad_clip, zero_stage=self.zero_stage, precision=self.precision, seed=self.seed,
            threads=self.threads, keep_checkpoints=self.keep_checkpoints)


@dataclass
class SFTConfig:
    """One SFT stage (training/sft.py): r1_cold, r1_sft and the distilled students."""

    epochs: float = 2.0  # passes over the training examples (R1's r1_sft: 2); the last step may spill over
    max_steps: int = 0  # cap on optimizer steps; 0: as many as `epochs` needs
    max_length: int = 512  # tokens per training row (BOS to EOS of each example); longer examples are skipped
    # several examples per row of max_length tokens, attending to each other (training/sft.py says why);
    # false: one example per row, rows of similar length batched together and right-padded
    packing: bool = True
    global_batch_size: int = 16  # rows per optimizer step, over all ranks and micro-steps
    micro_batch_size: int = 8  # rows per rank per forward
    learning_rate: float = 1e-4  # peak, after linear warmup; then cosine to learning_rate x min_lr_ratio
    min_lr_ratio: float = 0.1
    warmup_steps: int = 5
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # global gradient norm
    validation_fraction: float = 0.05  # share of examples held out (lowest hashes of their ids) for val_loss
    eval_every: int = 20  # steps between validation passes (and one at the start and the end)
    eval_batches: int = 0  # micro-batches per validation pass per rank; 0: the whole held-out slice
    checkpoint_every: int = 50  # steps between checkpoints (and one at the end)
    keep_checkpoints: int = 2
    log_every: int = 1
    mtp: bool = False  # also train the start model's MTP modules (when its export has them)
    seed: int = 0  # the order of the examples, the packing and the held-out slice
    zero_stage: int = 0
    precision: str = "auto"  # "auto" (bf16 on GPU, fp32 on CPU), "bf16", "fp32"
    threads: int = 0  # torch CPU threads per rank; 0 leaves torch's default

    def __post_init__(self) -> None:
        checks = [
            (self.epochs > 0, f"epochs is {self.epochs}; must be > 0"),
            (self.max_steps >= 0, f"max_steps is {self.max_steps}; must be >= 0 (0: no cap)"),
            (self.max_length >= 8, f"max_length is {self.max_length}; must be >= 8 tokens"),
            (self.micro_batch_size >= 1 and self.global_batch_size % self.micro_batch_size == 0,
             f"global_batch_size ({self.global_batch_size}) must be a multiple of micro_batch_size "
             f"({self.micro_batch_size} >= 1)"),
            (0.0 <= self.validation_fraction < 1.0,
             f"validation_fraction is {self.validation_fraction}; accepted: 0 <= share < 1"),
            (self.precision in ("auto", "bf16", "fp32"),
             f"precision is {self.precision!r}; accepted: 'auto', 'bf16', 'fp32'"),
        ]
        errors = [msg for ok, msg in checks if not ok]
        if errors:
            raise ProfileError("; ".join(errors))

    def as_engine_config(self, steps: int) -> "PretrainConfig":
        """The DeepSpeed-facing subset, in the shape training/engine.py takes. `steps`: the optimizer
        steps of the run, which depend on the data (training/sft.py counts them)."""
        return PretrainConfig(
            steps=steps, global_batch_size=self.global_batch_size, micro_batch_size=self.micro_batch_size,
            learning_rate=self.learning_rate, min_lr_ratio=self.min_lr_ratio,
            warmup_steps=min(self.warmup_steps, max(0, steps - 1)), schedule="cosine",
            weight_decay=self.weight_decay, grad_clip=self.grad_clip, zero_stage=self.zero_stage,
            precision=self.precision, seed=self.seed, threads=self.threads, keep_checkpoints=self.keep_checkpoints)


@dataclass
class SFTDataConfig:
    """An SFT set (training/sft_data.py): cold_start_sft or rejection_sampled_sft.

    Sources: `sampled` (a model's own samples: R1-Zero's for the cold start, the reasoning-RL model's
    for rejection sampling), `worked` (the task generators' worked solutions, train split), `general`
    (non-reasoning examples built from the corpus, training/general_prompts.py).
    """

    # sampling: k responses per train prompt
    samples_per_prompt: int = 4
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 256
    batch_size: int = 64  # sequences per generate call
    prompts: int = 0  # train tasks sampled from (a seeded draw); 0: all
    families: list[str] = field(default_factory=list)  # train tasks from these families; empty: all
    # sizes per source (examples in the set); a shortfall is reported, never padded with repeats
    sampled: int = -1  # kept samples taken; -1: all that pass
    worked: int = 0  # worked solutions taken (train split)
    reasoning_to_general: float = 0.0  # reasoning examples per general one (R1: about 3.0); 0: no general ones
    max_per_task: int = 1  # kept samples per task (the first ones, by sample index)
    # readability: every kept response is correct, well-formed, in one script and within these bounds
    language: str = "latin"  # target script (training/rewards/language.py)
    min_response_chars: int = 20
    max_response_chars: int = 2000
    # general examples (training/general_prompts.py)
    general_kinds: list[str] = field(default_factory=lambda: ["docstring", "function_name", "continuation"])
    general_max_prompt_chars: int = 600
    general_max_reference_chars: int = 200
    seed: int = 0
    sandbox_workers: int = 2

    def __post_init__(self) -> None:
        errors = []
        if self.samples_per_prompt < 1:
            errors.append(f"samples_per_prompt is {self.samples_per_prompt}; must be >= 1")
        if self.sampled < -1 or self.worked < 0:
            errors.append(f"sampled ({self.sampled}) must be >= -1 (-1: all) and worked ({self.worked}) >= 0")
        if self.reasoning_to_general < 0:
            errors.append(f"reasoning_to_general is {self.reasoning_to_general}; must be >= 0 (0: none)")
        if self.max_per_task < 1 or not 0 <= self.min_response_chars <= self.max_response_chars:
            errors.append(f"max_per_task ({self.max_per_task}) must be >= 1 and 0 <= min_response_chars "
                          f"({self.min_response_chars}) <= max_response_chars ({self.max_response_chars})")
        kinds = ("docstring", "function_name", "continuation")
        unknown = sorted(set(self.general_kinds) - set(kinds))
        if unknown:
            errors.append(f"general_kinds {unknown} unknown; accepted: {list(kinds)}")
        if errors:
            raise ProfileError("; ".join(errors))
        _check_families(self.families, "families")


@dataclass
class DistillationConfig:
    """Dense students distilled from r1 (assets/distillation.py; training/students.py builds them)."""

    # name -> ModelConfig overrides (widths, depth, attention dims); each becomes a dense model
    # below the teacher's activated size, sharing its vocabulary and positions
    students: dict[str, dict[str, Any]] = field(default_factory=dict)
    student_pretrain_steps: int = 200  # each student's base: pretraining on the same shards first
    samples: SFTDataConfig = field(default_factory=SFTDataConfig)  # r1's samples the students learn from


@dataclass
class Profile:
    name: str = DEFAULT_PROFILE
    description: str = ""
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    web_filters: WebFiltersConfig = field(default_factory=WebFiltersConfig)
    code_filters: CodeFiltersConfig = field(default_factory=CodeFiltersConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    shards: ShardsConfig = field(default_factory=ShardsConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    r1_zero: GRPOConfig = field(default_factory=GRPOConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    # the R1 stages (assets/r1.py), in order
    cold_start: SFTDataConfig = field(default_factory=SFTDataConfig)
    r1_cold: SFTConfig = field(default_factory=SFTConfig)
    r1_reasoning_rl: GRPOConfig = field(default_factory=lambda: GRPOConfig(rewards=["accuracy", "format", "language"]))
    rejection: SFTDataConfig = field(default_factory=lambda: SFTDataConfig(reasoning_to_general=3.0))
    r1_sft: SFTConfig = field(default_factory=SFTConfig)
    r1: GRPOConfig = field(default_factory=GRPOConfig)
    # distillation (assets/distillation.py)
    distillation: DistillationConfig = field(default_factory=DistillationConfig)
    distill_sft: SFTConfig = field(default_factory=SFTConfig)
    student_grpo: GRPOConfig = field(default_factory=GRPOConfig)
    tasks: TasksConfig = field(default_factory=TasksConfig)

    def __post_init__(self) -> None:
        worked = self.corpus.worked_examples
        if worked.heldout_share is None:
            worked.heldout_share = self.tasks.heldout_share
        elif worked.heldout_share != self.tasks.heldout_share:
            raise ProfileError(
                f"corpus.worked_examples.heldout_share ({worked.heldout_share}) differs from tasks.heldout_share "
                f"({self.tasks.heldout_share}); leave it null: the worked examples must use the tasks' split"
            )
        if self.model.vocab_size < self.tokenizer.vocab_size:
            raise ProfileError(
                f"model.vocab_size ({self.model.vocab_size}) is below tokenizer.vocab_size "
                f"({self.tokenizer.vocab_size}); the embedding must cover every token id"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """Dotted name -> value, for MLflow params and Dagster metadata."""
        out: dict[str, Any] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict) and value:
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
            else:
                out[prefix] = value

        walk("", self.to_dict())
        return out


# ---------------------------------------------------------------------------------------------
# loading


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ProfileError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(tp):
            try:
                return _coerce(value, arm, where)
            except ProfileError:
                continue
        raise ProfileError(f"{where}: {value!r} is none of {tp}")
    if origin is list:
        if not isinstance(value, list):
            raise ProfileError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ProfileError(f"{where}: expected a mapping, got {value!r}")
        _, val_tp = typing.get_args(tp)
        return {k: _coerce(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is type(None):
        if value is None:
            return None
        raise ProfileError(f"{where}: expected null, got {value!r}")
    if isinstance(tp, type) and not (tp is int and isinstance(value, bool)) and isinstance(value, tp):
        return value
    raise ProfileError(f"{where}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        section = f"section {where!r}" if where else "the top level"
        raise ProfileError(f"unknown field(s) {unknown} in {section}; accepted: {names}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def profile_from_dict(data: dict[str, Any], where: str = "profile") -> Profile:
    """A Profile from plain data (a stage config file), validated like a YAML profile."""
    try:
        return _build(Profile, data, "")
    except (ProfileError, ModelConfigError) as e:
        raise ProfileError(f"{where}: {e}") from None


def profile_path(name: str) -> Path:
    path = PROFILES_DIR / f"{name}.yaml"
    if not path.is_file():
        accepted = sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))
        raise ProfileError(f"profile {name!r} not found at {path}; accepted: {accepted}")
    return path


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ProfileError(f"override {dotted!r}: {part!r} is not a section")
    node[parts[-1]] = value


def load_profile(name: str | None = None, overrides: dict[str, Any] | None = None) -> Profile:
    """Read `infra/profiles/<name>.yaml` (default: $SEEKFLOW_PROFILE or tiny) and apply overrides."""
    name = name or os.environ.get("SEEKFLOW_PROFILE") or DEFAULT_PROFILE
    path = profile_path(name)
    with path.open() as f:
        raw = yaml.safe_load(f) or {}
    if not isinstance(raw, dict):
        raise ProfileError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value)
    try:
        return _build(Profile, raw, "")
    except (ProfileError, ModelConfigError) as e:
        raise ProfileError(f"{path}: {e}") from None


# ---------------------------------------------------------------------------------------------
# paths


def seekflow_home() -> Path:
    """Root of every output; created on first use."""
    home = Path(os.environ.get("SEEKFLOW_HOME") or REPO_ROOT / ".seekflow").resolve()
    home.mkdir(parents=True, exist_ok=True)
    return home


def data_dir(asset_name: str) -> Path:
    """Where an asset keeps its files: $SEEKFLOW_HOME/data/<asset>."""
    return seekflow_home() / "data" / asset_name
