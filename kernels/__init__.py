"""Triton kernels for the DeepSeek-V3 FP8 recipe and MoE, each beside a pure-PyTorch reference.

  fp8_quant   1x128 activation / 128x128 weight quantization to FP8 E4M3
  fp8_gemm    blockwise-scaled FP8 GEMM, FP32 accumulation (forward, dgrad, wgrad layouts): Triton
              (classic and TMA-persistent) or cuBLAS, the fastest chosen per shape and layout
  moe         token permutation, grouped GEMM over experts (bf16, FP8; classic and TMA-persistent),
              the experts' FP8 weight gradient in one launch, inverse permutation + combine
  autoselect  the per-shape choice between implementations (median of interleaved timed calls)
  fp8_linear  FP8 linear autograd function and module
  experts     grouped SwiGLU experts with autograd (bf16 / FP8)
  convert     opt-in FP8 converter by module name, with hardware checks

Everything imports without Triton or a GPU; on CPU tensors the references run (the emulation path).
"""
