#!/usr/bin/env bash
# Device calls (kind nvidia-h200, one GPU) for issue 7's FP8 loss spikes: is a kernel wrong?
#   CALL=1 (2026-11-30, third session, call 1): three lanes share the GPU (the small model's step is
#          host-bound; nothing in this call is a timing):
#     lane A  spike runs (benchmarks/fp8_spike.py: the real trainer, every forward repeated, FP8 against
#             the BF16 forward of the same weights): FP8 seed 1, then BF16 seed 1
#     lane B  spike run FP8 seed 3, then benchmarks/fp8_checks.py determinism (kernels, configs,
#             backends, auto's picks, FP8Linear / experts / whole model twice, deterministic algorithms)
#     lane C  compute-sanitizer over benchmarks/fp8_checks.py workload: memcheck, initcheck (PyTorch's
#             caching allocator off: every tensor its own allocation), racecheck; then the GPU kernel tests
#   CALL=2 (call 2): first, alone on the GPU, the BF16 / FP8 trainer pair of the earlier sessions'
#          config (160 steps, same data and seed; a gradient norm and loss every step); then two lanes:
#     lane A  FP8 spike runs with gradient checks (--grads: FP8 vs BF16 gradient of the same weights
#             every step), seeds 1 and 3, both recording their kernel choices to one file
#     lane B  initcheck without the kernels that store through TMA, and the TMA probe
# Output: $OUT/summary.txt, $OUT/*.json, $OUT/logs.tgz (every log).
#   CALL=1 SPIKE_STEPS=40 bash benchmarks/run_fp8_checks.sh
set -o pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=/tmp/tcache PYTHONWARNINGS=ignore
W=/dev/shm/seekflow; L=$W/logs; mkdir -p "$W/runs" "$L"
t_start=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t_start ))s] $*" | tee -a "$OUT/summary.txt"; }
STEPS=${SPIKE_STEPS:-40}

{
  nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv
  python3 -c "import torch, triton; print(torch.__version__, torch.version.cuda, triton.__version__)"
  compute-sanitizer --version | tail -1
  # NOTE: `python3 -m pip`, not `pip`: the bare pip on the PATH belongs to another interpreter
  python3 -m pip install --no-index --find-links .whl -r .whl/requirements.txt 2>&1 | tail -2 \
    || python3 -m pip install --no-index --no-deps --find-links .whl -r .whl/requirements.txt 2>&1 | tail -2
} > "$L/env.txt" 2>&1
stamp "setup: $(head -2 "$L/env.txt" | tail -1) | $(sed -n 3p "$L/env.txt") | $(sed -n 4p "$L/env.txt")"
python3 benchmarks/bench_pretrain.py data "$W/data" --train 2600 --validation 64 > /dev/null

spike() {  # name seed limit precision: a STEPS-step trainer run through fp8_spike.py
  local name=$1 seed=$2 limit=$3 precision=$4 dir="$W/runs/$1"
  python3 benchmarks/bench_pretrain.py config "$dir/stage.json" "$W/data" "$dir" pretrain.steps=$STEPS \
    pretrain.warmup_steps=10 pretrain.log_every=1 pretrain.eval_every=$STEPS pretrain.eval_batches=2 \
    pretrain.checkpoint_every=$STEPS pretrain.attention=auto pretrain.compile=false pretrain.seed=$seed \
    pretrain.precision=$precision > /dev/null
  stamp "start $name"
  timeout "$limit" python3 benchmarks/fp8_spike.py run "$dir/stage.json" "$L/${name}_spike.json" $GRADS \
    > "$L/$name.log" 2>&1
  stamp "end $name rc=$? $(grep -c ' tok/s' "$L/$name.log") steps logged"
}

sanitize() {  # tool limit extra-env...: compute-sanitizer over the kernel workload
  local tool=$1 limit=$2; shift 2
  local args=(--tool "$tool" --print-limit 200 --report-api-errors no)
  [ "$tool" = memcheck ] && args+=(--leak-check no)
  local big=--big; [ "$tool" = racecheck ] && big=""
  env "$@" timeout "$limit" compute-sanitizer "${args[@]}" python3 benchmarks/fp8_checks.py workload $big \
    > "$L/sanitize_$tool.log" 2>&1
  stamp "$tool rc=$?: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$L/sanitize_$tool.log" | tail -1) \
$(grep -c '^ok ' "$L/sanitize_$tool.log") workload parts ok, $(grep -c 'workload done' "$L/sanitize_$tool.log") done"
}

pair_run() {  # name precision limit: the earlier sessions' pair config, python -m training.pretrain
  local name=$1 dir="$W/runs/$1"
  python3 benchmarks/bench_pretrain.py config "$dir/stage.json" "$W/data" "$dir" pretrain.steps=160 \
    pretrain.warmup_steps=10 pretrain.log_every=1 pretrain.eval_every=160 pretrain.eval_batches=8 \
    pretrain.checkpoint_every=160 pretrain.attention=auto pretrain.compile=false pretrain.precision=$2 > /dev/null
  stamp "start $name"
  timeout "$3" python3 -m training.pretrain --config "$dir/stage.json" > "$L/$name.log" 2>&1
  stamp "end $name rc=$? $(grep -c ' tok/s' "$L/$name.log") steps logged; $(grep -E 'validation loss' "$L/$name.log" | tail -1 | cut -c1-120)"
  cp "$dir"/history.json "$L/${name}_history.json" 2>/dev/null
}

if [ "${CALL:-1}" = 1 ]; then
(
  spike fp8_seed1 1 ${SPIKE_S:-210} fp8
  spike bf16_seed1 1 ${SPIKE_BF16_S:-150} bf16
) &
(
  spike fp8_seed3 3 ${SPIKE_S:-210} fp8
  stamp "start determinism"
  timeout ${DET_S:-300} python3 benchmarks/fp8_checks.py determinism "$OUT/determinism.json" > "$L/determinism.log" 2>&1
  stamp "end determinism rc=$?: $(grep -E 'done in|Error' "$L/determinism.log" | tr '\n' ' ' | cut -c1-300)"
) &
(
  timeout ${WORK_S:-90} python3 benchmarks/fp8_checks.py workload --big > "$L/workload.log" 2>&1  # compiles, unsanitized
  stamp "workload rc=$? $(tail -1 "$L/workload.log")"
  sanitize memcheck ${SAN_S:-110}
  sanitize initcheck ${SAN_S:-110} PYTORCH_NO_CUDA_MEMORY_CACHING=1
  sanitize racecheck ${SAN_S:-110}
  timeout ${TEST_S:-150} python3 -m pytest tests/test_kernels_gpu.py -q -rs -n 4 -p no:cacheprovider > "$L/tests.log" 2>&1
  stamp "GPU tests: $(tail -1 "$L/tests.log")"; grep -E "^(FAILED|ERROR)" "$L/tests.log" | cut -c1-300 | head -20
) &
wait
else
  export SEEKFLOW_KERNEL_CHOICES=$W/kernel_choices.json  # every FP8 run of this call takes the same backends
  pair_run bf16_1 bf16 ${PAIR_BF16_S:-135}
  pair_run fp8_1 fp8 ${PAIR_FP8_S:-165}
  python3 benchmarks/bench_pretrain.py summary "$W/runs" "$L" "$OUT/pair.json" > "$L/pair_summary.md" 2>&1
  (
    GRADS=--grads spike fp8_seed1 1 ${SPIKE_S:-180} fp8
  ) &
  (
    GRADS=--grads spike fp8_seed3 3 ${SPIKE_S:-180} fp8
  ) &
  (
    timeout ${WORK_S:-90} python3 benchmarks/fp8_checks.py workload --big > "$L/workload.log" 2>&1
    stamp "workload rc=$? $(tail -1 "$L/workload.log")"
    env PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 60 compute-sanitizer --tool initcheck --show-backtrace no \
      python3 benchmarks/fp8_checks.py tma_probe > "$L/sanitize_tma_probe.log" 2>&1
    stamp "tma probe rc=$?: $(grep -E 'probe|ERROR SUMMARY' "$L/sanitize_tma_probe.log" | tr '\n' ' ' | cut -c1-400)"
    env PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout ${SAN_S:-170} compute-sanitizer --tool initcheck \
      --show-backtrace no --print-limit 3000 --report-api-errors no \
      python3 benchmarks/fp8_checks.py workload --big --no-tma-store > "$L/sanitize_initcheck.log" 2>&1
    stamp "initcheck (no TMA stores) rc=$?: $(grep -E 'ERROR SUMMARY' "$L/sanitize_initcheck.log" | tail -1) \
$(grep -c '^ok ' "$L/sanitize_initcheck.log") workload parts ok, $(grep -c 'workload done' "$L/sanitize_initcheck.log") done"
  ) &
  wait
  cp "$W/kernel_choices.json" "$L/" 2>/dev/null
  cat "$L/pair_summary.md" >> "$OUT/summary.txt"
  python3 - "$L" <<'EOF' | tee -a "$OUT/summary.txt"  # the pair's spikes: gradient norms, loss jumps
import re, statistics, sys
from pathlib import Path
for name in ("bf16_1", "fp8_1"):
    f = Path(sys.argv[1]) / f"{name}.log"
    rows = [(int(m[1]), float(m[2]), float(m[3])) for m in
            re.finditer(r"step (\d+)/\d+ loss ([\d.]+) mtp [\d.]+ lr \S+ gnorm ([\d.]+)", f.read_text())] if f.is_file() else []
    if not rows:
        print(f"{name}: no steps logged"); continue
    g = [r[2] for r in rows]
    jumps = [(b[0], a[1], b[1]) for a, b in zip(rows, rows[1:]) if b[1] - a[1] > 0.3]
    print(f"{name}: {len(rows)} steps; gradient norm max {max(g):.1f} at step {rows[g.index(max(g))][0]}, median "
          f"{statistics.median(g):.2f}, steps over 5x median {[r[0] for r in rows if r[2] > 5 * statistics.median(g)]}; "
          f"loss jumps over 0.3 nats (step: before -> at) {[(s, round(x, 3), round(y, 3)) for s, x, y in jumps]}")
EOF
fi

for t in memcheck initcheck racecheck; do  # which kernels the sanitizer named, how often
  [ -f "$L/sanitize_$t.log" ] || continue
  echo "== $t: kernels named in reports"
  grep -oE '(in|at) [_A-Za-z][_A-Za-z0-9:<>, ]{2,80}' "$L/sanitize_$t.log" | sort | uniq -c | sort -rn | head -12
  grep -m3 -B2 -A12 -E '^========= (Invalid|Uninitialized|Race|Error|.*[Hh]azard)' "$L/sanitize_$t.log" | cut -c1-200
done >> "$OUT/summary.txt" 2>&1
python3 benchmarks/fp8_spike.py summary "$L"/*_spike.json 2>&1 | cut -c1-2000 | tee -a "$OUT/summary.txt"
python3 - "$L" "$OUT/spikes.json" <<'EOF'
import json, sys
from pathlib import Path
runs = {p.name[:-len("_spike.json")]: json.loads(p.read_text()) for p in sorted(Path(sys.argv[1]).glob("*_spike.json"))}
Path(sys.argv[2]).write_text(json.dumps(runs))
EOF
tar -czf "$OUT/logs.tgz" -C "$W" logs
stamp "all done"
