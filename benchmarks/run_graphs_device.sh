#!/usr/bin/env bash
# One device call for `pretrain.cuda_graphs` (training/graphs.py) and the FP8 experts:
#   1. the GPU tests of the graphed blocks (eager vs graphed training, bf16 and FP8) and of the FP8 paths
#      the weight cache touches;
#   2. the real `small` trainer, STEPS steps per run on bench_pretrain.py's synthetic data, one run per
#      precision:mode in $RUNS (default BF16 and FP8, eager and graphed; mode compile: pretrain.compile);
#   3. bench_kernels.py's sections in $SECTIONS (default `dispatch`: the FP8 experts now against their
#      composition before).
# Logs and JSON under $OUT.   STEPS=30 RUN_S=110 [RUNS="fp8:compile+graphs fp8:graphs"] [BENCH_S=0] bash benchmarks/run_graphs_device.sh
# TESTS: extra pytest -k terms (e.g. "fp8_gemm"); TEST_S=0 skips the tests, STEPS=0 the trainer runs, BENCH_S=0
# the benchmarks; SECTIONS="gemm,dispatch". EVAL_EVERY=N: validation every N steps (default: only at the end),
# for a loss comparison (one long run a call: STEPS=1200 RUN_S=590 WARMUP=200 VALIDATION=64 EVAL_EVERY=250
# RUNS=fp8:compile+graphs, then bf16:compile; WARMUP: the profile's own warm-up, VALIDATION: sequences, 8 a batch).
# A spec named twice in RUNS runs twice (repeats: the second is <name>_2), e.g. RUNS="fp8:x bf16:x bf16:x fp8:x".
# DATA=code: real text instead of the synthetic stream (bench_pretrain.py `code`: the image's Python sources).
set -o pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=/tmp/tcache PYTHONWARNINGS=ignore
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1  # keep multicast off
STEPS=${STEPS:-30}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
# NOTE: `python3 -m pip`, not `pip`: the bare pip on the PATH belongs to another interpreter
python3 -m pip install -q --no-index --find-links .whl -r .whl/requirements.txt > /tmp/pip.log 2>&1 \
  || python3 -m pip install -q --no-index --no-deps --find-links .whl -r .whl/requirements.txt >> /tmp/pip.log 2>&1
if [ "${TEST_S:-150}" != 0 ]; then
  timeout ${TEST_S:-150} python3 -m pytest tests/test_kernels_gpu.py -q -rs -p no:cacheprovider --show-capture=no -n 4 \
    -k "graphed or requantizes or cuda_matches_emulation${TESTS:+ or $TESTS}" > "$OUT/tests.log" 2>&1
  echo "tests rc=$? $(tail -1 "$OUT/tests.log")"
  grep -E "^E |Error" "$OUT/tests.log" | head -20 | cut -c1-300
fi
D=/tmp/graphs_runs
if (( ${VALIDATION:-16} % 8 )); then echo "VALIDATION=${VALIDATION}: a multiple of 8 (the micro-batch)"; exit 1; fi
if [ "$STEPS" = 0 ]; then RUNS=" "
elif [ "${DATA:-synthetic}" = code ]; then
  # real text: the image's own Python sources (standard library and site-packages), the pipeline's BPE;
  # kept on the machine between calls (bench_pretrain.py reuses shards made for the same request)
  D=/tmp/graphs_runs_code
  python3 benchmarks/bench_pretrain.py code $D/data --train $(( STEPS * 16 + 40 )) --validation ${VALIDATION:-16} \
    --source $(python3 -c "import sysconfig as s; print(s.get_path('stdlib'), s.get_path('purelib'))") \
    > $OUT/data.log 2>&1 || { echo "code data failed:"; tail -5 $OUT/data.log; exit 1; }
  cp $D/data/pretraining_shards/index.json $OUT/data_index.json
  python3 -c "import json; i = json.load(open('$OUT/data_index.json')); print('code data:', i['source'], \
    {k: v['tokens'] for k, v in i['splits'].items()}, '(${SECONDS} s into the call)')"
else
  python3 benchmarks/bench_pretrain.py data $D/data --train $(( STEPS * 16 + 40 )) \
    --validation ${VALIDATION:-16} > /dev/null 2>&1
fi
# RUNS: precision:mode pairs, mode eager, graphs (pretrain.cuda_graphs), compile (pretrain.compile) or
# compile+graphs (both: the compiled blocks captured). PROFILE=N: torch.profiler over steps N, N+1 of each
# run (pretrain.profile_step) -> $OUT/profile_<prec>_<mode>.txt
declare -A seen  # a spec given again is a repeat: its run gets _2, _3, ... (logs and runs.json keep both)
for spec in ${RUNS:-bf16:eager bf16:graphs fp8:eager fp8:graphs}; do
  prec=${spec%%:*}; mode=${spec##*:}; name=${prec}_${mode//+/_}
  seen[$name]=$(( ${seen[$name]:-0} + 1 )); (( ${seen[$name]} > 1 )) && name=${name}_${seen[$name]}
  run=$D/$name
  rm -rf $run  # NOTE: each run's final checkpoint is ~1 GB; a few calls on one machine filled its disk
  python3 benchmarks/bench_pretrain.py config $run/stage.json $D/data $run pretrain.steps=$STEPS \
    pretrain.compile=$([[ $mode == *compile* ]] && echo true || echo false) \
    pretrain.cuda_graphs=$([[ $mode == *graphs* ]] && echo true || echo false) pretrain.precision=$prec \
    pretrain.profile_step=${PROFILE:-0} \
    pretrain.log_every=5 pretrain.warmup_steps=${WARMUP:-5} pretrain.eval_every=${EVAL_EVERY:-100000} \
    pretrain.eval_batches=$(( ${VALIDATION:-16} / 8 )) \
    pretrain.checkpoint_every=100000 > /dev/null
  timeout ${RUN_S:-110} python3 -m training.pretrain --config $run/stage.json > $OUT/run_$name.log 2>&1
  echo "$prec $mode rc=$? (${SECONDS} s into the call)"; grep -E "Error|error:" $OUT/run_$name.log | grep -v -i warn | tail -3 | cut -c1-300
  find $run -name "profile_rank0.txt" -exec cp {} $OUT/profile_$name.txt \; 2>/dev/null
  find $run -name "profile_rank0.json" -exec cp {} $OUT/profile_$name.json \; 2>/dev/null  # every kernel, not the top 60
  cp $run/checkpoints/kernel_choices.json $OUT/kernel_choices_$name.json 2>/dev/null
done
# figures from the logs (the final checkpoint and export may run past RUN_S; the steps are logged before)
python3 - "$OUT" <<'EOF'
import json, re, statistics, sys
from pathlib import Path
out, runs = Path(sys.argv[1]), {}
for log in sorted(Path(sys.argv[1]).glob("run_*.log")):
    steps = [(int(m[1]), float(m[2]), float(m[3].replace(",", ""))) for m in
             re.finditer(r"step (\d+)/\d+ loss ([\d.]+) .* ([\d,]+) tok/s", log.read_text())]
    if not steps:
        continue
    steady = [t for _, _, t in steps[1:]] or [steps[0][2]]  # the first window holds the warm-up
    # the validation losses (pretrain.eval_every, and the final one): what a BF16-FP8 loss gap compares
    validation = [(int(m[1]), float(m[2])) for m in re.finditer(r"step (\d+) validation loss ([\d.]+)",
                                                                log.read_text())]
    runs[log.stem] = {"tokens_per_s": statistics.median(steady), "losses": [(s, l) for s, l, _ in steps],
                      "windows": [t for _, _, t in steps], "validation": validation}
    print(f"{log.stem}: {statistics.median(steady):,.0f} tok/s (median of {len(steady)} windows), "
          f"losses {[round(l, 4) for _, l, _ in steps]}, validation {validation}")
(out / "runs.json").write_text(json.dumps(runs, indent=1))
EOF
if [ "${BENCH_S:-100}" != 0 ]; then
  timeout ${BENCH_S:-100} python3 benchmarks/bench_kernels.py --sections ${SECTIONS:-dispatch} \
    --json "$OUT/bench.json" > "$OUT/bench.log" 2>&1
  echo "bench rc=$?"; grep -E "^\||^#" "$OUT/bench.log" | cut -c1-400
fi
exit 0
