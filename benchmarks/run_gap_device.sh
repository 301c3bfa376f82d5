#!/usr/bin/env bash
# One device call of issue 7's loss-bound study (benchmarks/run_fp8_gap.sh, whose settings it passes on)
# under a time budget:
#   - the carried wheels installed ($WHEELS, default .whl/: infra/wheelhouse.sh; the device image lacks
#     deepspeed and pydantic);
#   - as many runs at a time as the GPU's memory holds (LANES: memory / 19,000 MiB, what a full-width run
#     takes: 4 on an H100, 7 on an H200), or one a CPU core without a GPU; on a GPU they share it through
#     MPS where it starts (MPS=0: they take turns, as before 2026-12-07's twenty-eighth session);
#   - no run started that would not end within BUDGET_S seconds (a call may run 10 minutes), judged by
#     the longest a finished run of its precision took; the study stopped when the budget is spent, its
#     unfinished runs with it: the next call on the same folder runs them anew and keeps the finished ones;
#   - the finished runs compared (bench_pretrain.py gap --means-only, against the 0.25% bound), and the
#     study's small files (histories, configs, logs, kernel choices, the data's index, each run's wall
#     time) packed into $OUT/gap.tgz for benchmarks/results/.
#   DATA=code WIDTH=full SEEDS="25 26 27 28 29 30 31" STEPS=200 LR=0.0005 REPEATS=0 BUDGET_S=560 \
#       bash benchmarks/run_gap_device.sh [DIR]        (DIR default /dev/shm/seekflow-gap)
set -uo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
OUT=${OUT:-/tmp/out}; D=${1:-/dev/shm/seekflow-gap}; BUDGET_S=${BUDGET_S:-560}
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
WHEELS=${WHEELS:-.whl}
mkdir -p "$OUT" "$D"
[ -f "$WHEELS/requirements.txt" ] && $PY -m pip install -q --no-index --find-links "$WHEELS" -r "$WHEELS/requirements.txt"
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
  LANES=${LANES:-$(( $(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -n 1) / 19000 ))}
else
  LANES=${LANES:-$(nproc)}
fi
# MPS (CUDA's multi-process service, MPS=0: off): the runs' kernels run on the GPU side by side instead of
# taking turns in time slices. A run of 2,048 tokens a step keeps the GPU busy a small part of the time
# (BENCHMARKS.md: ~5,000 tokens/s a run at four runs, against ~85,000 for one run of 32,768-token
# steps), so the study is bound by the turns. The kernels and their arithmetic are the same either way.
# Measured on an H100, four runs (BENCHMARKS.md, 2026-12-07 twenty-ninth session): with MPS a run's
# steady speed was 1.55x (FP8) and 1.89x (BF16) what it was taking turns.
# A CUDA context that cannot reach the daemon runs without it, silently; so a first context is made, and
# MPS counts as on only if the daemon then lists a server. Otherwise the runs take turns as before.
if [ "${MPS:-1}" = 1 ] && command -v nvidia-cuda-mps-control > /dev/null; then
  export CUDA_MPS_PIPE_DIRECTORY=$D/mps/pipe CUDA_MPS_LOG_DIRECTORY=$D/mps/log
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  # a daemon already there on this pipe (an earlier call stopped before it told it to quit) refuses a
  # second start; the context check below then finds it serving, and the runs use it
  nvidia-cuda-mps-control -d || echo "MPS: no daemon started (one is there already?)" >&2
  if $PY -c "import torch; torch.zeros(1, device='cuda')" &&
      server=$(echo get_server_list | nvidia-cuda-mps-control) && [ -n "$server" ]; then
    trap 'echo quit | nvidia-cuda-mps-control' EXIT
    echo "MPS on (server $server): the runs share the GPU at once" | tee "$OUT/mps.txt"
  else
    echo quit | nvidia-cuda-mps-control 2> /dev/null
    unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
    echo "MPS not in use (no server after a first CUDA context; its log: $D/mps/log): the runs take turns" \
        | tee "$OUT/mps.txt"
  fi
fi
# DeepSpeed builds its small ops with torch's JIT, and every run's start takes the build's lock file for a
# second or two: a run stopped right then leaves the file, and every later start would wait on it forever.
# So the study builds in its own folder, whose locks no process holds between calls, and each call clears
# them before its runs start.
export TORCH_EXTENSIONS_DIR=$D/torch_extensions
clear_locks() { find "$TORCH_EXTENSIONS_DIR" -name lock -type f -delete 2> /dev/null; }
clear_locks
left=$(( BUDGET_S - (SECONDS - start) ))
echo "$LANES runs at a time, $left s left for the study in $D"
# no run is started that would end after the last 30 s of the budget (run_fp8_gap.sh's DEADLINE; the 30 s
# are for its report): the call then ends before the budget, and the seconds it did not use are the next call's
export DEADLINE=$(( $(date +%s) + left - 30 ))
# timeout signals the script's whole process group, the runs too: SIGINT, so that Python unwinds (and a run
# inside the build lets its lock go), then SIGKILL to what is left 30 s later
LANES=$LANES PY=$PY timeout -s INT -k 30 "$left" bash benchmarks/run_fp8_gap.sh "$D" > "$OUT/gap.log" 2>&1
rc=$?
if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
  echo "BUDGET_S=$BUDGET_S spent: the study was stopped, its unfinished runs with it" | tee -a "$OUT/gap.log"
  finished=$(find "$D/runs" -mindepth 2 -maxdepth 2 -name history.json -printf '%h\n' 2>/dev/null | sort)
  echo "finished: $(echo $finished | xargs -n 1 basename 2>/dev/null | tr '\n' ' ')" | tee -a "$OUT/gap.log"
  if [ -n "$finished" ]; then
    # shellcheck disable=SC2086
    $PY benchmarks/bench_pretrain.py runs "$D/gap/finished.json" $finished > /dev/null &&
      $PY benchmarks/bench_pretrain.py gap "$D/gap/finished.json" --means-only >> "$OUT/gap.log" 2>&1
  fi
elif [ "$rc" != 0 ]; then
  echo "run_fp8_gap.sh failed (exit $rc): $OUT/gap.log" >&2
fi
tail -n 30 "$OUT/gap.log"
{ [ "$rc" = 124 ] || [ "$rc" = 137 ]; } && rc=0  # a budget spent is the plan, not a failure
(cd "$D" && find . \( -name history.json -o -name stage.json -o -name train.log -o -name kernel_choices.json \
    -o -name index.json -o -name data.log -o -name wall_s \) -print0 | tar czf "$OUT/gap.tgz" --null -T -)
exit "$rc"
