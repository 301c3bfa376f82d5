#!/usr/bin/env bash
# Issue 7's loss bound: the FP8 recipe against BF16, with everything else identical, so that the gap
# is the recipe's and not noise. Runs on the machine's GPU when it has one, else on the CPU.
#
# On a CPU the FP8 recipe is emulated (quantize, dequantize, matmul) and a run with one thread repeats
# bit for bit, so what differs between a BF16 and an FP8 run is the recipe's rounding alone.
# On a GPU the FP8 runs use the kernels (kernels/, chosen per shape: kernels/autoselect.py) and the
# runs do not repeat bit for bit (atomics, attention backward): the BF16 repeat measures that noise.
# Why this setup. At the `small` profile's default learning rate the GPU's BF16 runs of one config
# spread 0.8-2.3% between repeats (BENCHMARKS.md), far above the 0.25% to resolve; a low peak learning
# rate keeps the loss curve free of the synthetic stream's sudden transitions, which amplify any
# difference. By default the model is the `small` trainer's architecture at a quarter width and 4
# layers (WIDTH=full: `small`'s own model, too slow for a CPU), on bench_pretrain.py's synthetic stream.
#
#   bash benchmarks/run_fp8_gap.sh [DIR]   (SEEDS="1 2 3" STEPS=300 LR=0.002 LANES=2 WIDTH=quarter REPEATS=1
#                                          DATA=synthetic SOURCES=... PY=...)
# Each seed: a BF16 and an FP8 run; seed 1's BF16 run twice (on a CPU the repeat must equal the first),
# and once more with two threads (on a CPU: the same arithmetic summed in another order, the gap that
# last-bit differences alone grow into, what the FP8 gap must be read against; on a GPU a third repeat).
# REPEATS=0 leaves those two out: more seeds for a study whose noise floor was measured already.
# DATA=synthetic (default): bench_pretrain.py's stream (Zipf tokens, each odd position a fixed
# permutation of the token before). At full width some runs learn that rule late and suddenly (the
# loss falls ~0.2 nats within ~30 steps, at a step that differs run to run), which makes the loss at a
# fixed step bimodal (BENCHMARKS.md, 2026-12-07). DATA=code: real text instead, the Python sources of
# SOURCES (default: this Python's standard library and site-packages) with the pipeline's BPE at the
# stream's vocabulary (bench_pretrain.py code).
# Then bench_pretrain.py summary prints each run, and bench_pretrain.py gap the FP8-vs-BF16 gaps: per
# seed (validation and training loss, the control beside them) and over all seeds (the means and
# their 2 SE, unpaired and paired by seed).
# (Named run_fp8_gap_cpu.sh until 2026-12-07.)
set -euo pipefail
cd "$(dirname "$0")/.."
D=${1:-/tmp/seekflow-fp8-gap}
SEEDS=${SEEDS:-1 2 3}
STEPS=${STEPS:-300}
LR=${LR:-0.002}  # peak; a low one keeps the loss curve free of the stream's sudden transitions
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
# WIDTH=quarter (default): the small profile's shape at a quarter of its width (hidden 256, 4 layers,
# experts 16 x 128, 4 of them a token); WIDTH=full: the small profile's model itself (hidden 1024,
# 12 layers, 32 experts of 512), a GPU's job. Both on the stream's vocabulary and sequence length.
STREAM="tokenizer.vocab_size=2048 model.vocab_size=2048 model.rope_parameters.original_max_position_embeddings=256
 shards.sequence_length=256"
case ${WIDTH:-quarter} in
  quarter) MODEL="$STREAM model.hidden_size=256 model.intermediate_size=768 model.num_hidden_layers=4
 model.num_attention_heads=4 model.max_position_embeddings=1024 model.q_lora_rank=128 model.kv_lora_rank=64
 model.n_routed_experts=16 model.n_group=4 model.topk_group=2 model.moe_intermediate_size=128" ;;
  full) MODEL=$STREAM ;;
  *) echo "WIDTH=$WIDTH: accepted values are quarter and full" >&2; exit 2 ;;
esac
REPEATS=${REPEATS:-1}
case $REPEATS in 0|1) ;; *) echo "REPEATS=$REPEATS: accepted values are 1 (default) and 0" >&2; exit 2 ;; esac
DATA=${DATA:-synthetic}
case $DATA in synthetic|code) ;; *) echo "DATA=$DATA: accepted values are synthetic (default) and code" >&2; exit 2 ;; esac
# A run's weights are not what the study reads: without KEEP_WEIGHTS=1 it writes none
# (pretrain.checkpoint_every=0: no checkpoint, no export; at full width they are ~10 GB, and writing them
# took 25-35 s of a 90-130 s run on the H100, BENCHMARKS.md 2026-12-07 twenty-ninth session).
KEEP_WEIGHTS=${KEEP_WEIGHTS:-0}
case $KEEP_WEIGHTS in 0|1) ;; *) echo "KEEP_WEIGHTS=$KEEP_WEIGHTS: accepted values are 0 (default) and 1" >&2; exit 2 ;; esac
mkdir -p "$D/runs" "$D/logs"
if [ -f "$D/data/pretraining_shards/index.json" ]; then  # a study resumed: its data is there, of the same kind?
  made=$(grep -q '"synthetic"' "$D/data/pretraining_shards/index.json" && echo synthetic || echo code)
  [ "$made" = "$DATA" ] || { echo "$D/data holds DATA=$made shards, not DATA=$DATA: give another folder" >&2; exit 2; }
elif [ "$DATA" = code ]; then
  # shellcheck disable=SC2046
  $PY benchmarks/bench_pretrain.py code "$D/data" --vocab 2048 --seq 256 --train 2600 --validation 32 --tokenizer-mb 8 \
      --source ${SOURCES:-$($PY -c "import sysconfig as s; print(s.get_path('stdlib'), s.get_path('purelib'))")} \
      > "$D/logs/data.log"
else
  $PY benchmarks/bench_pretrain.py data "$D/data" --vocab 2048 --seq 256 --train 2600 --validation 32
fi
TRAIN="pretrain.steps=$STEPS pretrain.global_batch_size=8 pretrain.micro_batch_size=8 pretrain.warmup_steps=30
 pretrain.learning_rate=$LR pretrain.schedule=cosine pretrain.zero_stage=0 pretrain.compile=false
 pretrain.eval_every=$STEPS pretrain.eval_batches=4 pretrain.checkpoint_every=$(( KEEP_WEIGHTS == 1 ? STEPS : 0 ))
 pretrain.log_every=10 pretrain.threads=1 launch.nproc_per_node=1"
jobs=()
for seed in $SEEDS; do
  for prec in bf16 fp8; do
    # shellcheck disable=SC2086
    $PY benchmarks/bench_pretrain.py config "$D/runs/${prec}_$seed/stage.json" "$D/data" "$D/runs/${prec}_$seed" \
        $MODEL $TRAIN "pretrain.precision=$prec" "pretrain.seed=$seed" > /dev/null
    jobs+=("runs/${prec}_$seed")
  done
done
first=${SEEDS%% *}
if [ "$REPEATS" = 1 ]; then
  $PY benchmarks/bench_pretrain.py config "$D/repeat/bf16_$first/stage.json" "$D/data" "$D/repeat/bf16_$first" $MODEL \
      $TRAIN pretrain.precision=bf16 "pretrain.seed=$first" > /dev/null
  # the noise floor: the same BF16 run with two threads, whose reductions sum in another order (last bits)
  $PY benchmarks/bench_pretrain.py config "$D/control/bf16_$first/stage.json" "$D/data" "$D/control/bf16_$first" $MODEL \
      $TRAIN pretrain.precision=bf16 "pretrain.seed=$first" pretrain.threads=2 > /dev/null
  jobs+=("repeat/bf16_$first" "control/bf16_$first")
fi
# one CPU thread a run, LANES runs at a time (on a CPU the FP8 emulation takes about twice as long as BF16;
# on an 80 GB GPU four full-width runs fit, five do not). A run that has its history.json already is not
# run again (a study resumed, or completed with runs copied in).
# The FP8 runs share one file of kernel choices (kernels/autoselect.py): the first run to meet a GEMM
# layout times its candidates and records the winner, and every later run takes it. So all FP8 runs of
# a study sum in the same order, and they no longer time candidates on a GPU that other runs share (so
# noisily that 36 of 67 choices differed between runs, 2026-12-07; an FP8 run's first 10 steps took
# ~21 s there against ~4 s for BF16, its Triton autotuning included).
export SEEKFLOW_KERNEL_CHOICES=$D/kernel_choices.json
# DEADLINE (seconds since the epoch; run_gap_device.sh sets it from its budget): a run is not started
# when the longest that a finished run of its precision took in this study (its wall_s) would end it
# after the deadline. A run stopped at the deadline is time lost; the runs not started wait for the next call.
export PY D DEADLINE=${DEADLINE:-}
printf '%s\n' "${jobs[@]}" | xargs -P "${LANES:-2}" -n 1 sh -c '
  run=$0; name=${run##*/}
  [ -f "$D/$run/history.json" ] && { echo "$run: history.json there, not run again"; exit 0; }
  if [ -n "$DEADLINE" ]; then
    need=$(cat "$D"/*/"${name%%_*}"_*/wall_s 2> /dev/null | sort -n | tail -n 1)
    if [ -n "$need" ] && [ $(( $(date +%s) + need )) -gt "$DEADLINE" ]; then
      echo "$run: not started, as it would end after the deadline (a run of its precision took $need s)"; exit 0
    fi
  fi
  t0=$(date +%s)
  if $PY -m training.pretrain --config "$D/$run/stage.json" > "$D/$run/train.log" 2>&1; then
    echo $(( $(date +%s) - t0 )) > "$D/$run/wall_s"
  else
    echo "$run failed: $D/$run/train.log"
  fi
  exit 0'
# what follows reads the runs that finished: a run failed or not started leaves its seed out
$PY benchmarks/bench_pretrain.py summary "$D/runs" "$D/logs" "$D/summary.json" | tail -n 8
[ "$REPEATS" = 0 ] || [ ! -f "$D/runs/bf16_$first/history.json" ] || [ ! -f "$D/repeat/bf16_$first/history.json" ] ||
    $PY - "$D" "$first" <<'EOF'
import json, sys
from pathlib import Path
d, first = Path(sys.argv[1]), sys.argv[2]
losses = [[(h.get("loss"), h.get("val_loss")) for h in json.loads((d / w / f"bf16_{first}" / "history.json").read_text())]
          for w in ("runs", "repeat")]
print(f"bf16 seed {first} run twice: "
      f"{'bitwise the same losses' if losses[0] == losses[1] else 'DIFFERENT losses: not deterministic'}")
EOF
# the gaps, by bench_pretrain.py gap: each seed's FP8 run against its BF16 run (the first seed's
# two-thread control beside them: the noise floor), then the means of all seeds' runs with 2 standard errors
for seed in $SEEDS; do
  [ -f "$D/runs/bf16_$seed/history.json" ] && [ -f "$D/runs/fp8_$seed/history.json" ] ||
      { echo "## seed $seed: not compared, a run without its history.json"; continue; }
  control=(); [ "$seed" = "$first" ] && [ "$REPEATS" = 1 ] && [ -f "$D/control/bf16_$seed/history.json" ] &&
      control=("$D/control/bf16_$seed")
  $PY benchmarks/bench_pretrain.py runs "$D/gap/seed_$seed.json" "$D/runs/bf16_$seed" "$D/runs/fp8_$seed" \
      "${control[@]}" > /dev/null
  echo "## seed $seed"; $PY benchmarks/bench_pretrain.py gap "$D/gap/seed_$seed.json" --phases $((STEPS / 2))
done
finished=$(find "$D/runs" -mindepth 2 -maxdepth 2 -name history.json -printf '%h\n' | sort)
[ -n "$finished" ] || { echo "no run finished in $D/runs" >&2; exit 1; }
# shellcheck disable=SC2086
$PY benchmarks/bench_pretrain.py runs "$D/gap/all.json" $finished > /dev/null
echo "## all seeds"; $PY benchmarks/bench_pretrain.py gap "$D/gap/all.json" --means-only
