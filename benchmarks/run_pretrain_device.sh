#!/usr/bin/env bash
# One device call (kind nvidia-h200-x2) for the `small` profile's trainer figures (issues 4 and 7):
#   setup    wheels from .whl/ (infra/wheelhouse.sh), synthetic shards, GPU checks of the fast paths
#   phase A  GPU 0: the transformers peer, then ours bf16 compiled     (one after the other, same GPU)
#            GPU 1: ours bf16 eager, then ours FP8 eager                (same data and steps: loss gap)
#   phase B  both GPUs: ours bf16, expert parallelism EP=2 (torchrun)
#   phase C  GPU 0: the peer at batch 8 and 16, ours compiled with micro-batch 16 (ZeRO-1, then ZeRO-0)
#            GPU 1: FP8 checks per linear shape, ours FP8 eager, ours bf16 eager (the loss-gap pair)
#   phase D  GPU 1: ours FP8 eager; GPU 0: ours bf16 eager again (the bf16-vs-bf16 noise floor)
#   phase E  after DeepSpeed's per-parameter bf16 overflow check was turned off (training/engine.py):
#            GPU 0: the peer, ours compiled (micro-batch 8); GPU 1: ours compiled (micro-batch 16);
#            then both GPUs: EP=2 compiled
#   phase F  issue 7's FP8-vs-BF16 comparison (2026-11-30): three BF16 and three FP8 runs of identical
#            configs but the precision (same data, seeds, steps; eager), alternating over the two GPUs
#            so that each precision runs on both: the BF16 runs' spread is the noise floor
#   phase G  (one GPU) the GPU kernel tests, the FP8 step's GPU time by kernel kind at widths 1x and
#            4x (bench_pretrain.py widths), one more FP8 run of phase F's config (one of three spiked)
#   phase H  (two GPUs, 2026-12 FP8 changes) GPU 0: phase F's BF16 / FP8 pair (eager), then the same pair
#            compiled for 80 steps (pretrain.compile=true: FP8 ops are eager islands in the compiled blocks);
#            GPU 1: the GPU kernel tests, bench_kernels.py quant / linear / wgrad, widths 1x and 4x
#   phase I  (two GPUs) GPU 0: three FP8 seeds of 40 steps through benchmarks/fp8_spike.py (loss, gradient
#            norm and per-module gradient norms every step), one BF16 seed beside them, then one more FP8
#            run of phase F's config; GPU 1: the GPU kernel tests, bench_kernels.py quant / linear / host
#            (host time of a small FP8 linear, cProfile), widths 1x and 4x
#   phase K  (two GPUs) GPU 0: a BF16 / FP8 pair of phase F's config, one FP8 spike run (seed 1, 30 steps);
#            GPU 1: the GPU kernel tests, bench_kernels.py quant / linear, widths 1x and 4x, widths 8x (2
#            layers: the 8x model with 4 layers was not tried), one FP8 spike run (seed 3)
# (one call runs "A B", "C", "D", "E", "F", "G", "H", "I" or "K": each fits the 10-minute limit of a call)
#   summary  $OUT/pretrain.json, $OUT/summary.md; every log, history and profile in $OUT/logs.tgz
# PHASES="A B" picks phases; every run has its own time limit, so a failure costs only its slot.
set -o pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
PHASES=${PHASES:-A B}
STEPS=${STEPS:-40}
export PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=/tmp/tcache PYTHONWARNINGS=ignore
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1  # keep multicast off
W=/dev/shm/seekflow  # data, checkpoints and exports in RAM: disk speed is not what is measured
L=$W/logs  # few files may come back from $OUT: logs go into one tarball at the end
mkdir -p "$W/runs" "$L"
t_start=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t_start ))s] $*" | tee -a "$OUT/steps.log"; }

{
  python3 -V; nproc
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit,memory.total --format=csv
  python3 -c "import torch, triton, transformers; print(torch.__version__, torch.version.cuda, triton.__version__, transformers.__version__, torch.cuda.device_count())"
  # NOTE: `python3 -m pip`, not `pip`: the bare pip on the PATH belongs to another interpreter
  python3 -m pip install --no-index --find-links .whl -r .whl/requirements.txt 2>&1 | tail -3 \
    || python3 -m pip install --no-index --no-deps --find-links .whl -r .whl/requirements.txt 2>&1 | tail -3
  python3 -c "import deepspeed, datatrove, dagster_pipes, pydantic; print('deepspeed', deepspeed.__version__)"
} > "$L/env.txt" 2>&1
stamp "setup done"; tail -4 "$L/env.txt"

python3 benchmarks/bench_pretrain.py data "$W/data" --train ${TRAIN_SEQS:-1024} --validation 64 > /dev/null
[ -n "$SKIP_CHECKS" ] || CUDA_VISIBLE_DEVICES=0 timeout 150 python3 benchmarks/bench_pretrain.py checks "$L/checks.json" > "$L/checks.log" 2>&1
ATTN=${ATTN:-$(tail -1 "$L/checks.log" | grep -E '^(auto|flash|cudnn|efficient)$' || echo auto)}
stamp "checks done, attention kernel: $ATTN"; cut -c1-400 "$L/checks.log" 2>/dev/null

COMMON="pretrain.steps=$STEPS pretrain.warmup_steps=10 pretrain.log_every=5 pretrain.eval_every=$STEPS
pretrain.eval_batches=${EVAL_BATCHES:-2} pretrain.checkpoint_every=$STEPS pretrain.attention=$ATTN"

train() {  # name gpus limit_s overrides...: one trainer run, its log under $OUT
  local name=$1 gpus=$2 limit=$3; shift 3
  local dir="$W/runs/$name"
  python3 benchmarks/bench_pretrain.py config "$dir/stage.json" "$W/data" "$dir" $COMMON \
    launch.nproc_per_node="$gpus" "$@" > /dev/null
  stamp "start $name on GPU(s) ${CUDA_VISIBLE_DEVICES:-all}"
  if [ "$gpus" = 1 ]; then
    timeout "$limit" python3 -m training.pretrain --config "$dir/stage.json" > "$L/$name.log" 2>&1
  else
    timeout "$limit" python3 -m torch.distributed.run --nproc_per_node "$gpus" --master_port 29533 \
      -m training.pretrain --config "$dir/stage.json" > "$L/$name.log" 2>&1
  fi
  stamp "end $name rc=$? $(grep -c 'tok/s' "$L/$name.log") logged windows"
  cp "$dir"/profile_rank0.txt "$L/${name}_profile.txt" 2>/dev/null
  cp "$dir"/profile_rank0.json "$L/${name}_profile.json" 2>/dev/null
  cp "$dir"/history.json "$L/${name}_history.json" 2>/dev/null
  cp "$dir"/stage.json "$L/${name}_stage.json" 2>/dev/null
  grep -E "tok/s|validation|Error|error" "$L/$name.log" | tail -12 | cut -c1-300
}

if [[ " $PHASES " == *" A "* ]]; then
  (
    export CUDA_VISIBLE_DEVICES=0
    stamp "start HF peer"
    timeout 180 python3 benchmarks/peer_hf_deepseek_v3.py > "$L/hf_peer.log" 2>&1
    stamp "end HF peer: $(tail -1 "$L/hf_peer.log")"
    train bf16_compile 1 330 pretrain.precision=bf16 pretrain.compile=true pretrain.profile_step=$((STEPS - 8))
  ) &
  (
    export CUDA_VISIBLE_DEVICES=1
    train bf16_eager 1 240 pretrain.precision=bf16 pretrain.profile_step=$((STEPS - 8))
    train fp8_eager 1 270 pretrain.precision=fp8
  ) &
  wait
fi

if [[ " $PHASES " == *" C "* ]]; then
  (
    export CUDA_VISIBLE_DEVICES=0
    timeout 120 python3 benchmarks/peer_hf_deepseek_v3.py > "$L/hf_peer.log" 2>&1
    timeout 120 python3 benchmarks/peer_hf_deepseek_v3.py 16 > "$L/hf_peer_b16.log" 2>&1
    stamp "HF peer: $(tail -1 "$L/hf_peer.log") | batch 16: $(tail -1 "$L/hf_peer_b16.log")"
    train bf16_compile_mb16 1 240 pretrain.precision=bf16 pretrain.compile=true pretrain.micro_batch_size=16 \
      pretrain.profile_step=$((STEPS - 8))
    train bf16_compile_mb16_zero0 1 180 pretrain.precision=bf16 pretrain.compile=true \
      pretrain.micro_batch_size=16 pretrain.zero_stage=0
  ) &
  (
    export CUDA_VISIBLE_DEVICES=1
    timeout 150 python3 benchmarks/bench_pretrain.py checks "$L/checks_fp8.json" --which fp8_linears,fp8_experts \
      > "$L/checks_fp8.log" 2>&1
    stamp "fp8 checks: $(cut -c1-1500 "$L/checks_fp8.log")"
    train fp8_eager 1 240 pretrain.precision=fp8 pretrain.profile_step=$((STEPS - 8))
    train bf16_eager 1 150 pretrain.precision=bf16
  ) &
  wait
fi

if [[ " $PHASES " == *" D "* ]]; then
  (CUDA_VISIBLE_DEVICES=1 train fp8_eager 1 330 pretrain.precision=fp8 pretrain.profile_step=$((STEPS - 8))) &
  (CUDA_VISIBLE_DEVICES=0 train bf16_eager_repeat 1 200 pretrain.precision=bf16) &
  wait
fi

if [[ " $PHASES " == *" E "* ]]; then
  (
    export CUDA_VISIBLE_DEVICES=0
    timeout 120 python3 benchmarks/peer_hf_deepseek_v3.py > "$L/hf_peer.log" 2>&1
    stamp "HF peer: $(tail -1 "$L/hf_peer.log")"
    train bf16_compile_fast 1 200 pretrain.precision=bf16 pretrain.compile=true pretrain.profile_step=$((STEPS - 8))
  ) &
  (CUDA_VISIBLE_DEVICES=1 train bf16_compile_mb16_fast 1 200 pretrain.precision=bf16 pretrain.compile=true \
     pretrain.micro_batch_size=16) &
  wait
  train ep2_bf16_fast 2 150 pretrain.precision=bf16 pretrain.ep_size=2 pretrain.compile=true
fi

if [[ " $PHASES " == *" F "* ]]; then
  F_BF16=${F_BF16_S:-140}; F_FP8=${F_FP8_S:-190}  # per-run limits: the three runs of a GPU fit one call
  (export CUDA_VISIBLE_DEVICES=0
   train bf16_1 1 $F_BF16 pretrain.precision=bf16 pretrain.compile=false
   train fp8_2 1 $F_FP8 pretrain.precision=fp8 pretrain.compile=false
   train bf16_3 1 $F_BF16 pretrain.precision=bf16 pretrain.compile=false) &
  (export CUDA_VISIBLE_DEVICES=1
   train fp8_1 1 $F_FP8 pretrain.precision=fp8 pretrain.compile=false
   train bf16_2 1 $F_BF16 pretrain.precision=bf16 pretrain.compile=false
   train fp8_3 1 $F_FP8 pretrain.precision=fp8 pretrain.compile=false) &
  wait
fi

if [[ " $PHASES " == *" G "* ]]; then  # one GPU: GPU tests, FP8 step breakdown, one more FP8 run
  export CUDA_VISIBLE_DEVICES=0
  timeout 150 python3 -m pytest tests/test_kernels_gpu.py -q -rs -n 4 -p no:cacheprovider > "$L/tests.log" 2>&1
  stamp "GPU tests: $(tail -1 "$L/tests.log")"; grep -E "^(FAILED|ERROR)" "$L/tests.log" | cut -c1-200
  timeout 140 python3 benchmarks/bench_pretrain.py widths "$L/widths_profile.json" --scales 1 4 --steps 4 --profile \
    > "$L/widths_profile.log" 2>&1
  stamp "widths: rc=$?"; grep -E "^\||scale" "$L/widths_profile.log" | cut -c1-900
  train fp8_4 1 ${G_FP8_S:-220} pretrain.precision=fp8 pretrain.compile=false
fi

spike() {  # name seed limit overrides...: a 40-step run with per-module gradient norms every step
  local name=$1 seed=$2 limit=$3; shift 3
  local dir="$W/runs/$name"
  python3 benchmarks/bench_pretrain.py config "$dir/stage.json" "$W/data" "$dir" $COMMON pretrain.compile=false \
    pretrain.seed=$seed pretrain.steps=40 pretrain.log_every=1 pretrain.eval_every=40 pretrain.checkpoint_every=40 \
    "$@" > /dev/null
  stamp "start spike run $name on GPU ${CUDA_VISIBLE_DEVICES}"
  timeout "$limit" python3 benchmarks/fp8_spike.py run "$dir/stage.json" "$L/${name}_norms.json" > "$L/$name.log" 2>&1
  stamp "end $name rc=$?"
  cp "$dir"/history.json "$L/${name}_history.json" 2>/dev/null
  grep -E "step (1|5|10|15|20|25|30|35|40)/|Error" "$L/$name.log" | cut -c1-200
}

if [[ " $PHASES " == *" H "* ]]; then
  (export CUDA_VISIBLE_DEVICES=0
   train bf16_1 1 ${H_BF16_S:-130} pretrain.precision=bf16 pretrain.compile=false
   train fp8_1 1 ${H_FP8_S:-150} pretrain.precision=fp8 pretrain.compile=false
   train bf16c_1 1 ${H_BF16C_S:-120} pretrain.precision=bf16 pretrain.compile=true pretrain.steps=80
   train fp8c_1 1 ${H_FP8C_S:-140} pretrain.precision=fp8 pretrain.compile=true pretrain.steps=80) &
  (export CUDA_VISIBLE_DEVICES=1
   timeout ${H_TEST_S:-150} python3 -m pytest tests/test_kernels_gpu.py -q -rs -n 4 -p no:cacheprovider > "$L/tests.log" 2>&1
   stamp "GPU tests: $(tail -1 "$L/tests.log")"; grep -E "^(FAILED|ERROR)" "$L/tests.log" | cut -c1-300
   timeout ${H_BENCH_S:-120} python3 benchmarks/bench_kernels.py --sections quant,linear,wgrad --json "$L/bench.json" \
     > "$L/bench.log" 2>&1
   stamp "bench rc=$?"; grep -E "^\||^#" "$L/bench.log" | cut -c1-300
   TOP_KERNELS=1 timeout ${H_WIDTH_S:-220} python3 benchmarks/bench_pretrain.py widths "$L/widths.json" --scales 1 4 --steps 4 \
     --profile > "$L/widths.log" 2>&1
   stamp "widths rc=$?"; grep -E "^\||scale" "$L/widths.log" | cut -c1-900) &
  wait
fi

if [[ " $PHASES " == *" I "* ]]; then
  (export CUDA_VISIBLE_DEVICES=0
   for seed in 1 2 3; do spike fp8_seed$seed $seed 90 pretrain.precision=fp8; done
   spike bf16_seed1 1 80 pretrain.precision=bf16
   train fp8_2 1 ${H_FP8_S:-150} pretrain.precision=fp8 pretrain.compile=false) &
  (export CUDA_VISIBLE_DEVICES=1
   timeout ${H_TEST_S:-150} python3 -m pytest tests/test_kernels_gpu.py -q -rs -n 4 -p no:cacheprovider > "$L/tests.log" 2>&1
   stamp "GPU tests: $(tail -1 "$L/tests.log")"; grep -E "^(FAILED|ERROR)|^E  " "$L/tests.log" | cut -c1-300 | head -30
   timeout ${H_BENCH_S:-150} python3 benchmarks/bench_kernels.py --sections quant,linear,host --json "$L/bench.json" \
     > "$L/bench.log" 2>&1
   stamp "bench rc=$?"; grep -vE "^\s*$" "$L/bench.log" | cut -c1-220 | head -80
   TOP_KERNELS=1 timeout ${H_WIDTH_S:-200} python3 benchmarks/bench_pretrain.py widths "$L/widths.json" --scales 1 4 \
     --steps 4 --profile > "$L/widths.log" 2>&1
   stamp "widths rc=$?"; grep -E "^\||scale|act_quant_dual" "$L/widths.log" | cut -c1-700) &
  wait
  python3 benchmarks/fp8_spike.py summary "$L"/*_norms.json 2>&1 | cut -c1-1500
fi

if [[ " $PHASES " == *" K "* ]]; then  # the last call of 2026-11-30's second session (device time left: ~11 min)
  (export CUDA_VISIBLE_DEVICES=0
   train bf16_2 1 ${H_BF16_S:-125} pretrain.precision=bf16 pretrain.compile=false
   train fp8_3 1 ${H_FP8_S:-155} pretrain.precision=fp8 pretrain.compile=false
   spike fp8_seed1 1 ${K_SPIKE_S:-110} pretrain.precision=fp8 pretrain.steps=30) &
  (export CUDA_VISIBLE_DEVICES=1
   timeout ${H_TEST_S:-120} python3 -m pytest tests/test_kernels_gpu.py -q -rs -n 4 -p no:cacheprovider > "$L/tests.log" 2>&1
   stamp "GPU tests: $(tail -1 "$L/tests.log")"; grep -E "^(FAILED|ERROR)|^E  " "$L/tests.log" | cut -c1-300 | head -20
   timeout ${H_BENCH_S:-90} python3 benchmarks/bench_kernels.py --sections quant,linear --json "$L/bench.json" \
     > "$L/bench.log" 2>&1
   stamp "bench rc=$?"; grep -E "^\|" "$L/bench.log" | cut -c1-220
   TOP_KERNELS=1 timeout ${H_WIDTH_S:-110} python3 benchmarks/bench_pretrain.py widths "$L/widths.json" --scales 1 4 \
     --steps 4 --profile > "$L/widths.log" 2>&1
   stamp "widths rc=$?"; grep -E "^\||scale [0-9]+ " "$L/widths.log" | cut -c1-700
   TOP_KERNELS=1 timeout ${I_WIDTH_S:-130} python3 benchmarks/bench_pretrain.py widths "$L/widths8.json" --scales 8 \
     --layers 2 --steps 3 --profile > "$L/widths8.log" 2>&1
   stamp "widths 8x rc=$?"; grep -E "^\||scale [0-9]+ |rror" "$L/widths8.log" | cut -c1-700
   spike fp8_seed3 3 ${K_SPIKE_S:-110} pretrain.precision=fp8 pretrain.steps=30) &
  wait
  python3 benchmarks/fp8_spike.py summary "$L"/*_norms.json 2>&1 | cut -c1-1500
fi

left=$(( ${DEADLINE:-560} - ($(date +%s) - t_start) - 25 ))  # the call's limit is 600 s
EP_LIMIT=$(( left < ${EP_LIMIT:-240} ? left : ${EP_LIMIT:-240} ))
if [[ " $PHASES " == *" B "* ]] && [ "$EP_LIMIT" -lt 90 ]; then
  stamp "phase B skipped: ${left}s left"
elif [[ " $PHASES " == *" B "* ]]; then
  COMPILE=false
  [ -f "$W/runs/bf16_compile/history.json" ] && COMPILE=true
  [[ " $PHASES " == *" A "* ]] || COMPILE=${COMPILE_EP:-true}
  train ep2_bf16 2 $EP_LIMIT pretrain.precision=bf16 pretrain.ep_size=2 pretrain.compile=$COMPILE
fi

python3 benchmarks/bench_pretrain.py summary "$W/runs" "$L" "$OUT/pretrain.json" | tee "$OUT/summary.md"
for f in "$L"/*.log; do echo "== $f"; grep -E "Error|error:|Traceback" "$f" | head -4 | cut -c1-300; done
tar -czf "$OUT/logs.tgz" -C "$W" logs
stamp "all done"
