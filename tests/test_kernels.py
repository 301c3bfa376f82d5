"""CPU tests of the kernels' references and of the FP8 emulation path (what CI runs).

Every check draws fresh random inputs and compares against a float64 computation; FP8 E4M3 keeps a
3-bit mantissa, so a product of two quantized operands lands a few 1e-2 (relative Frobenius) from the
exact one. GPU kernels are compared with these references in tests/test_kernels_gpu.py.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from kernels.convert import FP8Config, convert_to_fp8
from kernels.experts import GroupedExperts, experts_ref
from kernels.fp8_gemm import fp8_gemm, fp8_gemm_ref
from kernels.fp8_linear import FP8Linear
from kernels.fp8_quant import (FP8_MAX, act_dequant, act_quant, act_quant_dual_ref, act_quant_ref, weight_dequant,
                               weight_quant_dual_ref, weight_quant_ref)
from kernels.moe import grouped_gemm_ref, moe_ref
from kernels.routing import combine_backward_ref, combine_ref, make_routing, permute_ref
from tests.kernel_helpers import FP8_BOUND, count_backward_layouts, count_calls, rel

pytestmark = pytest.mark.usefixtures("fresh_seed")


# ---------------------------------------------------------------------------------------------
# quantization


@pytest.mark.parametrize("shape", [(64, 256), (37, 200), (5, 130), (1, 7)])
def test_act_quant_ref_tiles(shape):
    x = torch.randn(shape) * torch.rand(shape[0], 1) * 10
    q, s = act_quant_ref(x)
    assert q.shape == x.shape and q.dtype == torch.float8_e4m3fn
    assert s.shape == (shape[0], -(-shape[1] // 128))
    # every tile's largest value maps to the top of the FP8 range
    tiles = torch.nn.functional.pad(q.float().abs(), (0, s.shape[1] * 128 - shape[1]))
    assert torch.equal(tiles.view(shape[0], -1, 128).amax(-1), torch.full_like(s, FP8_MAX))
    assert rel(act_dequant(q, s), x) < 0.08


@pytest.mark.parametrize("shape", [(256, 384), (200, 130), (129, 64)])
def test_weight_quant_ref_blocks(shape):
    w = torch.randn(shape)
    q, s = weight_quant_ref(w)
    assert s.shape == (-(-shape[0] // 128), -(-shape[1] // 128))
    assert rel(weight_dequant(q, s), w) < 0.08
    assert q.float().abs().max() == FP8_MAX


def test_tile_scales_confine_an_outlier():
    # one huge activation must cost precision only inside its own 1x128 tile
    x = torch.randn(16, 512)
    x[3, 5] = 1e5
    q, s = act_quant_ref(x)
    err = (act_dequant(q, s) - x).abs()
    others = torch.ones_like(x, dtype=torch.bool)
    others[3, :128] = False
    assert (err[others] / x.abs()[others]).median() < 0.05
    # one scale for the whole tensor instead pushes ordinary values into FP8's subnormals
    st = x.abs().max() / FP8_MAX
    err_t = ((x / st).to(torch.float8_e4m3fn).float() * st - x).abs()
    assert (err_t[others] / x.abs()[others]).median() > 0.1


def test_act_quant_pads_columns_with_zeros_and_keeps_scales():
    # the wgrad pads the token axis to 128 so that the FP8 rows stay 16-byte aligned (fp8_linear.py)
    x = torch.randn(6, 300)
    q, s = act_quant_ref(x)
    qp, sp = act_quant_ref(x, pad_to=128)
    assert qp.shape == (6, 384) and torch.equal(sp, s)
    assert torch.equal(qp[:, :300].float(), q.float()) and not qp[:, 300:].float().any()


@pytest.mark.parametrize("M,K", [(300, 256), (128, 130), (5, 7)])
def test_dual_activation_layouts_are_the_tiles_of_x_and_of_x_transposed(M, K):
    # one pass writes 1x128 tiles along K (forward, dgrad) and 128x1 tiles along M (wgrad), x^T padded
    # with zero columns to a multiple of 128 tokens; each layout dequantizes to x within FP8 rounding
    x = torch.randn(M, K) * torch.rand(M, 1) * 10
    q, s, qt, st = act_quant_dual_ref(x)
    Mp = -(-M // 128) * 128
    assert qt.shape == (K, Mp) and st.shape == (K, -(-M // 128)) and s.shape == (M, -(-K // 128))
    assert not qt[:, M:].float().any()
    assert rel(act_dequant(q, s), x) < 0.05
    assert rel(act_dequant(qt[:, :M], st), x.t()) < 0.05
    # the column scales are the amax of 128 tokens of one feature, over 448
    assert torch.allclose(st[:, 0], x[:128].abs().amax(0) / FP8_MAX)


@pytest.mark.parametrize("shape", [(384, 256), (200, 300), (3, 256, 130)])
def test_dual_weight_layouts_transpose_with_their_blocks(shape):
    # the dgrad's w^T is the transposed FP8 copy with the transposed scales (blocks transpose with it)
    w = torch.randn(shape)
    q, s, qt, st = weight_quant_dual_ref(w)
    wd = torch.stack([weight_dequant(q[e], s[e]) for e in range(w.shape[0])]) if w.dim() == 3 else weight_dequant(q, s)
    wtd = (torch.stack([weight_dequant(qt[e], st[e]) for e in range(w.shape[0])]) if w.dim() == 3
           else weight_dequant(qt, st))
    assert torch.equal(wtd, wd.transpose(-1, -2))
    assert rel(wd, w) < 0.05


def test_zero_tile_gives_zeros_not_nan():
    x = torch.zeros(4, 256)
    x[0, 200] = 1.0
    q, s = act_quant_ref(x)
    assert torch.isfinite(s).all() and torch.equal(act_dequant(q, s), x)


# ---------------------------------------------------------------------------------------------
# blockwise GEMM: the three layouts of a linear layer


@pytest.mark.parametrize("M,N,K", [(128, 256, 384), (70, 200, 300), (256, 128, 1024)])
def test_fp8_gemm_ref_forward_dgrad_wgrad(M, N, K):
    x, w, dy = torch.randn(M, K), torch.randn(N, K) / K**0.5, torch.randn(M, N)
    xq, xs = act_quant_ref(x)
    wq, ws = weight_quant_ref(w)
    y = fp8_gemm_ref(xq, xs, wq, ws, 128)  # forward x @ w^T
    assert rel(y, x.double() @ w.double().t()) < FP8_BOUND
    dyq, dys = act_quant_ref(dy)
    dx = fp8_gemm_ref(dyq, dys, wq.t().contiguous(), ws.t().contiguous(), 128)  # dgrad dy @ w
    assert rel(dx, dy.double() @ w.double()) < FP8_BOUND
    dtq, dts = act_quant_ref(dy.t())  # wgrad dy^T @ x: both quantized along tokens
    xtq, xts = act_quant_ref(x.t())
    dw = fp8_gemm_ref(dtq, dts, xtq, xts, 1)
    assert rel(dw, dy.double().t() @ x.double()) < FP8_BOUND
    # the dispatcher on CPU is the same emulation
    assert torch.equal(fp8_gemm(xq, xs, wq, ws, 128, out_dtype=torch.float32), y)


def test_fp8_gemm_refuses_mismatched_shapes():
    aq, sa = act_quant_ref(torch.randn(64, 256))
    bq, sb = weight_quant_ref(torch.randn(128, 384))
    with pytest.raises(AssertionError, match="K must agree"):
        fp8_gemm_ref(aq, sa, bq, sb)
    bq, sb = weight_quant_ref(torch.randn(128, 256))
    with pytest.raises(AssertionError, match="B scales must be"):
        fp8_gemm_ref(aq, sa, bq, sb, b_block=1)
    with pytest.raises(AssertionError, match="must be torch.float8_e4m3fn"):
        fp8_gemm_ref(torch.randn(64, 256), sa, bq, sb)



def test_gluon_warp_specialized_config_refuses_what_it_cannot_do():
    # the warp-specialized Gluon kernel (WS_CONFIG) writes a 2-byte result: fp32 is refused by name
    # before any GPU is asked for; every layout (forward, dgrad, and wgrad with B's 1x128 tiles) passes
    from kernels.fp8_gemm import fp8_gemm_gluon_checked
    from kernels.fp8_gemm_gluon import GLUON_CONFIGS, WS_CONFIG
    assert GLUON_CONFIGS[WS_CONFIG].warp_specialized
    n = len(GLUON_CONFIGS)
    aq, sa = act_quant_ref(torch.randn(128, 256))
    wq, ws = weight_quant_ref(torch.randn(256, 256))
    with pytest.raises(ValueError, match=f"config {WS_CONFIG} .*got torch.float32; use config 0 or 1"):
        fp8_gemm_gluon_checked(aq, sa, wq, ws, 128, torch.float32, config=WS_CONFIG)
    with pytest.raises(ValueError, match=rf"config must be 0\.\.{n - 1}"):
        fp8_gemm_gluon_checked(aq, sa, wq, ws, 128, torch.bfloat16, config=n)
    # what it takes passes the check and stops only at the missing GPU (or Triton, as in CI)
    bq, sb = act_quant_ref(torch.randn(256, 256))  # wgrad: B with 1x128 tiles
    for b, s, b_block in ((wq, ws, 128), (bq, sb, 1)):
        with pytest.raises(RuntimeError, match="fp8_gemm_gluon: (Triton is not installed|expected CUDA tensors)"):
            fp8_gemm_gluon_checked(aq, sa, b, s, b_block, torch.bfloat16, config=WS_CONFIG)


# ---------------------------------------------------------------------------------------------
# backend="auto": the selection logic, with CPU stand-ins for the backends and a fake timer
# (what the real timer measures on a GPU is in BENCHMARKS.md)


class _FakeTimer:
    """Returns fixed per-call samples (ms) per candidate; records which candidates it was asked to time."""

    def __init__(self, samples):
        self.samples, self.calls = samples, []

    def __call__(self, fns):
        self.calls.append(sorted(fns))
        return {n: self.samples[n] for n in fns}


def _operands(M=96, N=160, K=256):
    aq, sa = act_quant_ref(torch.randn(M, K))
    bq, sb = weight_quant_ref(torch.randn(N, K))
    return aq, sa, bq, sb


def _stand_ins():
    def right(*args):
        return fp8_gemm_ref(*args[:5], out_dtype=args[5])

    def wrong(*args):  # e.g. cuBLAS on a scale layout it mishandles: fast and 10% off
        return right(*args) * 1.1

    def refuses(*args):
        raise ValueError("this layout is not supported")

    return {"wrong": wrong, "refuses": refuses, "spiky": right, "steady": right}


def test_auto_keeps_the_fastest_median_of_the_backends_that_agree(monkeypatch):
    from kernels import fp8_gemm as mod
    monkeypatch.setattr(mod, "_BACKEND_CACHE", {})
    # "spiky" is faster on 20 of 21 calls but one outlier makes its MEAN slower than "steady"
    timer = _FakeTimer({"spiky": [1.0] * 20 + [500.0], "steady": [2.0] * 21, "wrong": [0.1] * 21})
    ops = _operands()
    assert mod.pick_backend(*ops, 128, torch.float32, candidates=_stand_ins(), timer=timer) == "spiky"
    assert timer.calls == [["spiky", "steady"]]  # neither the wrong nor the refusing one is timed
    (choice,) = mod.backend_choices()
    assert "disagrees" in choice["refused"]["wrong"] and "ValueError" in choice["refused"]["refuses"]
    assert choice["median_ms"] == {"spiky": 1.0, "steady": 2.0}
    # cached per layout: the same layout is not measured again ...
    assert mod.pick_backend(*ops, 128, torch.float32, candidates=_stand_ins(), timer=timer) == "spiky"
    assert len(timer.calls) == 1
    # ... another layout of the same shapes is (a K-strided view of A; a bf16 output)
    aq, sa, bq, sb = ops
    a_view = torch.empty(aq.shape[1], aq.shape[0], dtype=aq.dtype).t().copy_(aq)
    mod.pick_backend(a_view, sa, bq, sb, 128, torch.float32, candidates=_stand_ins(), timer=timer)
    mod.pick_backend(aq, sa, bq, sb, 128, torch.bfloat16, candidates=_stand_ins(), timer=timer)
    assert len(timer.calls) == 3 and len(mod.backend_choices()) == 3


@pytest.mark.parametrize("second_ms,winner", [(0.99, "first"), (0.9, "second")])
def test_auto_ties_go_to_the_first_listed_backend(monkeypatch, second_ms, winner):
    from kernels import fp8_gemm as mod
    monkeypatch.setattr(mod, "_BACKEND_CACHE", {})
    right = _stand_ins()["steady"]
    timer = _FakeTimer({"first": [1.0] * 21, "second": [second_ms] * 21})
    got = mod.pick_backend(*_operands(), 128, torch.float32, candidates={"first": right, "second": right},
                           timer=timer)
    assert got == winner  # within 2% of the fastest is a tie, and the first listed wins it


def test_auto_falls_back_to_the_reference_when_no_backend_agrees(monkeypatch):
    from kernels import fp8_gemm as mod
    monkeypatch.setattr(mod, "_BACKEND_CACHE", {})
    cands = {k: v for k, v in _stand_ins().items() if k in ("wrong", "refuses")}
    with pytest.warns(UserWarning, match="no candidate ran and agreed"):
        got = mod.pick_backend(*_operands(), 128, torch.float32, candidates=cands,
                               timer=_FakeTimer({}))
    assert got == "reference"


def test_gpu_timed_choices_are_recorded_apart_from_launch_timed_ones(monkeypatch, tmp_path):
    # a CUDA-graph run (pretrain.cuda_graphs) chooses by device time: a choice made by launch timing
    # (an eager run on the same machine) must not be taken for it, nor the other way round
    from kernels import autoselect
    from kernels import fp8_gemm as mod
    monkeypatch.setenv(autoselect.CHOICES_ENV, str(tmp_path / "choices.json"))
    right, ops = _stand_ins()["steady"], _operands()
    cands = {"first": right, "second": right}
    monkeypatch.setattr(mod, "_BACKEND_CACHE", {})
    assert mod.pick_backend(*ops, 128, torch.float32, candidates=cands,
                            timer=_FakeTimer({"first": [1.0] * 21, "second": [0.9] * 21})) == "second"
    try:
        autoselect.set_timing("gpu")
        monkeypatch.setattr(mod, "_BACKEND_CACHE", {})
        t = _FakeTimer({"first": [0.5] * 21, "second": [0.9] * 21})
        assert mod.pick_backend(*ops, 128, torch.float32, candidates=cands, timer=t) == "first"
        assert t.calls and mod.backend_choices()[0]["how"] == "measured"
    finally:
        autoselect.set_timing("launch")
    sections = json.loads((tmp_path / "choices.json").read_text())
    assert sorted(sections) == [autoselect.machine_signature(), autoselect.machine_signature() + " | gpu timing"]
    with pytest.raises(ValueError, match="'launch' or 'gpu', got 'wall'"):
        autoselect.set_timing("wall")


def test_auto_choice_is_recorded_and_the_next_run_takes_it_untimed(monkeypatch, tmp_path):
    # two runs of the same model must multiply each layout with the same backend: a timed choice
    # flipped between runs on 15 of 36 layouts of the small model on the H200 (cuBLAS and Triton
    # sum in different orders, so the runs diverged from the first step)
    from kernels import autoselect
    from kernels import fp8_gemm as mod
    monkeypatch.setenv(autoselect.CHOICES_ENV, str(tmp_path / "choices.json"))
    right = _stand_ins()["steady"]
    ops = _operands()
    monkeypatch.setattr(mod, "_BACKEND_CACHE", {})  # run 1: "second" measures faster
    t1 = _FakeTimer({"first": [1.0] * 21, "second": [0.9] * 21})
    assert mod.pick_backend(*ops, 128, torch.float32, candidates={"first": right, "second": right}, timer=t1) == "second"
    monkeypatch.setattr(mod, "_BACKEND_CACHE", {})  # run 2 (a new process): now "first" would measure faster
    t2 = _FakeTimer({"first": [0.5] * 21, "second": [0.9] * 21})
    assert mod.pick_backend(*ops, 128, torch.float32, candidates={"first": right, "second": right}, timer=t2) == "second"
    assert t2.calls == [] and mod.backend_choices()[0]["how"] == "recorded"
    # a recorded backend that no longer agrees with the reference is measured again, with a warning
    monkeypatch.setattr(mod, "_BACKEND_CACHE", {})
    with pytest.warns(UserWarning, match="does not agree"):
        got = mod.pick_backend(*ops, 128, torch.float32, candidates={"first": right, "second": _stand_ins()["wrong"]},
                               timer=t2)
    assert got == "first" and t2.calls == [["first"]]
    # the file is per machine signature: a file written on another GPU or software stack is not trusted
    monkeypatch.setattr(autoselect, "machine_signature", lambda: "another GPU | torch 0 | triton 0")
    monkeypatch.setattr(mod, "_BACKEND_CACHE", {})
    assert mod.pick_backend(*ops, 128, torch.float32, candidates={"first": right, "second": right}, timer=t2) == "first"
    assert len(json.loads((tmp_path / "choices.json").read_text())) == 2


def test_auto_under_deterministic_algorithms_takes_the_first_agreeing_backend_untimed(monkeypatch):
    from kernels import fp8_gemm as mod
    monkeypatch.setattr(mod, "_BACKEND_CACHE", {})
    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: True)
    timer = _FakeTimer({"steady": [9.0] * 21, "spiky": [1.0] * 21})
    cands = {k: _stand_ins()[k] for k in ("refuses", "wrong", "steady", "spiky")}
    assert mod.pick_backend(*_operands(), 128, torch.float32, candidates=cands, timer=timer) == "steady"
    assert timer.calls == [] and mod.backend_choices()[0]["how"] == "deterministic"


# ---------------------------------------------------------------------------------------------
# FP8 linear (emulated on CPU) and the converter


def test_fp8_linear_emulation_grads_match_float64():
    lin = nn.Linear(320, 192)
    fp8 = FP8Linear.from_linear(lin)
    x = torch.randn(3, 50, 320, requires_grad=True)
    y = fp8(x)
    dy = torch.randn_like(y)
    y.backward(dy)
    x64 = x.detach().double().requires_grad_()
    w64 = lin.weight.detach().double().requires_grad_()
    b64 = lin.bias.detach().double().requires_grad_()
    y64 = torch.nn.functional.linear(x64, w64, b64)
    y64.backward(dy.double())
    assert rel(y, y64) < FP8_BOUND
    assert rel(x.grad, x64.grad) < FP8_BOUND
    assert rel(lin.weight.grad, w64.grad) < FP8_BOUND
    assert rel(lin.bias.grad, b64.grad) < 1e-5


class _Toy(nn.Module):
    def __init__(self, vocab=64, dim=128):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList(nn.ModuleDict({
            "norm": nn.LayerNorm(dim), "wq": nn.Linear(dim, dim), "gate": nn.Linear(dim, 4, bias=False),
            "w1": nn.Linear(dim, 256), "w2": nn.Linear(256, dim)}) for _ in range(2))
        self.head = nn.Linear(dim, vocab, bias=False)

    def forward(self, ids):
        h = self.embed(ids)
        for lyr in self.layers:
            n = lyr["norm"](h)
            h = h + lyr["wq"](n) * torch.sigmoid(lyr["gate"](n)).mean(-1, keepdim=True)
            h = h + lyr["w2"](torch.relu(lyr["w1"](lyr["norm"](h))))
        return self.head(h)


# one rounding to the dtype: what separates dx in one GEMM over the stacked gate and up projections
# (kernels/fp8_linear.py gate_up_stacked) from autograd's sum of two rounded products
ONE_ROUNDING = {torch.float32: 1e-6, torch.bfloat16: 2 ** -8}


@pytest.mark.parametrize("inter", [384, 320])  # gate and up stacked into one FP8 weight, or not (320 % 128)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp8_swiglu_mlp_is_its_three_fp8_linears_bit_for_bit(dtype, inter):
    # training/model/moe.py MLP.forward, once converted, runs kernels/fp8_linear.py FP8SwiGLUFunction
    # (x quantized once, SwiGLU's product and gradients made inside their quantizations): emulated, the
    # same output and gradients as the three FP8 linears around the eager SwiGLU, bit for bit; dx too
    # unless gate and up are stacked, where it is one product rounded once instead of two summed
    import torch.nn.functional as F

    from training.model.moe import MLP

    torch.manual_seed(0)
    mlp = MLP(256, inter).to(dtype)
    convert_to_fp8(mlp)
    x, dy = torch.randn(2, 50, 256, dtype=dtype), torch.randn(2, 50, 256, dtype=dtype)
    results = []
    for fused in (False, True):
        xi = x.clone().requires_grad_()
        for p in mlp.parameters():
            p.grad = None
        y = mlp(xi) if fused else mlp.down_proj(F.silu(mlp.gate_proj(xi)) * mlp.up_proj(xi))
        y.backward(dy)
        results.append((y.detach(), xi.grad, *(p.grad for p in (mlp.gate_proj.weight, mlp.up_proj.weight,
                                                                mlp.down_proj.weight))))
    for name, a, b in zip(("y", "dx", "d gate", "d up", "d down"), *results):
        if name == "dx" and inter % 128 == 0:
            assert rel(a, b) < ONE_ROUNDING[dtype], name
        else:
            assert torch.equal(a, b), name


def test_converter_selects_by_name_and_keeps_parameters():
    model = _Toy()
    keys, params = list(model.state_dict()), {n: p for n, p in model.named_parameters()}
    names = convert_to_fp8(model, FP8Config())
    assert sorted(names) == sorted(f"layers.{i}.{n}" for i in range(2) for n in ("wq", "w1", "w2"))
    assert type(model.head) is nn.Linear and type(model.layers[0]["gate"]) is nn.Linear
    assert isinstance(model.layers[1]["w1"], FP8Linear)
    assert list(model.state_dict()) == keys
    assert all(p is params[n] for n, p in model.named_parameters())
    with pytest.raises(ValueError, match="no nn.Linear"):
        convert_to_fp8(_Toy(), FP8Config(include=["nothing.*"]))


def test_fp8_emulated_training_tracks_fp32_loss():
    # same init, same data: the FP8 model's loss after some steps stays close to the fp32 one
    torch.manual_seed(0)
    ref = _Toy()
    fp8 = _Toy()
    fp8.load_state_dict(ref.state_dict())
    convert_to_fp8(fp8)
    data = torch.randint(0, 64, (4, 17))
    losses = []
    for model in (ref, fp8):
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        for _ in range(10):
            logits = model(data[:, :-1])
            loss = nn.functional.cross_entropy(logits.reshape(-1, 64), data[:, 1:].reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
        losses.append(loss.item())
    assert losses[1] < 4.0  # it learned (log 64 = 4.16 at init)
    assert abs(losses[1] - losses[0]) / losses[0] < 0.02


# ---------------------------------------------------------------------------------------------
# FP8 weights quantized once per optimizer step (kernels/weight_cache.py)


class _CountingOps:
    """Counts weight quantizations of the emulated FP8 path (what the cache saves)."""

    def __init__(self, monkeypatch):
        import dataclasses

        import kernels.fp8_linear as fl
        self.calls = 0
        base = fl.EMULATED_OPS

        def counted(fn):
            def wrapper(*a, **k):
                self.calls += 1
                return fn(*a, **k)
            return wrapper

        monkeypatch.setattr(fl, "EMULATED_OPS", dataclasses.replace(
            base, weight=counted(base.weight), weight_dual=counted(base.weight_dual)))


def _fresh_output(lin: nn.Linear, x):
    """The FP8 output from a copy of the weights that has never been cached."""
    copy = nn.Linear(lin.in_features, lin.out_features, bias=lin.bias is not None)
    copy.load_state_dict(lin.state_dict())
    with torch.no_grad():
        return FP8Linear.from_linear(copy)(x)


def test_fp8_weight_is_quantized_once_per_optimizer_step_and_again_after_it(monkeypatch):
    counter = _CountingOps(monkeypatch)
    lin = nn.Linear(256, 384)
    fp8 = FP8Linear.from_linear(lin)
    opt = torch.optim.AdamW(lin.parameters(), lr=1e-2)
    probe = torch.randn(16, 256)
    for step in range(3):
        before, n = lin.weight.detach().clone(), counter.calls
        for micro in range(4):  # gradient accumulation: the weight does not change in between
            x = torch.randn(32, 256, requires_grad=True)
            fp8(x).square().mean().backward()
        assert counter.calls == n + 1  # one quantization (both layouts) for the four micro-steps
        opt.step()
        opt.zero_grad()
        assert not torch.equal(lin.weight, before)  # the step changed the weight...
        n = counter.calls
        with torch.no_grad():
            y = fp8(probe)
        assert counter.calls == n + 1  # ...so the next forward quantized it again
        assert torch.equal(y, _fresh_output(lin, probe))  # and used the new weight


def test_fp8_weight_cache_sees_in_place_writes_and_explicit_invalidation(monkeypatch):
    from kernels.weight_cache import invalidate_fp8_weights
    _CountingOps(monkeypatch)
    lin = nn.Linear(128, 256, bias=False)
    fp8 = FP8Linear.from_linear(lin)
    x = torch.randn(8, 128)
    with torch.no_grad():
        fp8(x)
        lin.weight.mul_(-2.0)  # an autograd-visible in-place write bumps the version counter
        assert torch.equal(fp8(x), _fresh_output(lin, x))
        # NOTE: a write through .data bumps nothing (DeepSpeed writes bf16 weights this way after
        # its fp32 master step); such code calls invalidate_fp8_weights()
        lin.weight.data.copy_(torch.randn(256, 128))
        invalidate_fp8_weights()
        assert torch.equal(fp8(x), _fresh_output(lin, x))


def test_fp8_experts_reuse_and_refresh_their_quantized_weights(monkeypatch):
    counter = _CountingOps(monkeypatch)
    T, D, I, E, k = 40, 128, 128, 4, 2
    ex = GroupedExperts(E, D, I, init_std=0.1)
    ex.fp8 = True
    opt = torch.optim.SGD(ex.parameters(), lr=1.0)
    ids, tw = _routing_inputs(T, k, E)
    x = torch.randn(T, D)
    for _ in range(2):  # two micro-steps, then a step
        ex(x.requires_grad_(), ids, tw).square().sum().backward()
    assert counter.calls == 2  # [w1; w3] (stacked: I % 128 == 0) and w2, once each
    opt.step()
    with torch.no_grad():
        y = ex(x, ids, tw)
        assert counter.calls == 5  # the step changed all three: quantized again (one layout: w1, w3, w2)
        fresh = GroupedExperts(E, D, I)
        fresh.load_state_dict(ex.state_dict())
        fresh.fp8 = True
        assert torch.equal(y, fresh(x, ids, tw))
        ex.w3.mul_(2.0)  # the up projection alone: the stack is stale, w2 is not
        before = counter.calls
        y = ex(x, ids, tw)
        assert counter.calls == before + 2  # w1 and w3
        fresh.w3.mul_(2.0)
        assert torch.equal(y, fresh(x, ids, tw))


_DEEPSPEED_SCRIPT = r'''
import torch
from torch import nn
import deepspeed
from training import distributed
from kernels.convert import convert_to_fp8
from kernels.fp8_linear import FP8Linear
import kernels.fp8_linear as fl

distributed.init()
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 128))
convert_to_fp8(model)  # emulated on CPU: the same cache as on the GPU
calls = []
base = fl.EMULATED_OPS
import dataclasses
fl.EMULATED_OPS = dataclasses.replace(base, weight_dual=lambda w: calls.append(1) or base.weight_dual(w),
                                      weight=lambda w: calls.append(1) or base.weight(w))
opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
cfg = {"train_batch_size": 8, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2,
       "zero_optimization": {"stage": 1}, "steps_per_print": 10**9}
engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=cfg)
probe = torch.randn(4, 256)

def fresh(x):
    copy = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 128))
    copy.load_state_dict({k: v.clone() for k, v in model.state_dict().items()})
    with torch.no_grad():
        return nn.Sequential(FP8Linear.from_linear(copy[0]), copy[1], FP8Linear.from_linear(copy[2]))(x)

for step in range(3):
    w0 = model[0].weight.detach().clone()
    for micro in range(2):
        n = len(calls)
        out = engine(torch.randn(4, 256))
        engine.backward(out.square().mean())
        engine.step()  # an optimizer step only after the second micro-step
        if micro == 1:
            assert len(calls) == n, "the second micro-step quantized the unchanged weights again"
    assert not torch.equal(model[0].weight, w0), "the engine did not change the weight"
    n = len(calls)
    with torch.no_grad():
        y = model(probe)
    assert len(calls) == n + 2, f"step {step}: {len(calls) - n} quantizations after the engine's step, expected 2"
    assert torch.equal(y, fresh(probe)), f"step {step}: stale FP8 weights after the engine's step"
print("deepspeed cache ok")
'''


def test_fp8_weight_cache_under_deepspeed_engine_with_accumulation():
    # DeepSpeed's ZeRO optimizer writes the weights through .data after its inner step: the cache
    # must still see every optimizer step, and only those (two micro-steps share one quantization)
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("deepspeed")
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root))
    env.pop("RANK", None)
    res = subprocess.run([sys.executable, "-c", _DEEPSPEED_SCRIPT], cwd=root, env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0 and "deepspeed cache ok" in res.stdout, res.stdout[-2000:] + res.stderr[-4000:]


# ---------------------------------------------------------------------------------------------
# MoE: routing, permutation, grouped GEMM, combine


def _routing_inputs(T=50, k=3, E=7, empty=True):
    ids = torch.stack([torch.randperm(E - int(empty))[:k] for _ in range(T)])  # last expert empty
    tw = torch.softmax(torch.randn(T, k), -1)
    return ids, tw


def test_make_routing_segments_are_aligned_and_complete():
    ids, _ = _routing_inputs()
    r = make_routing(ids, 7)
    assert (r.offsets % 128 == 0).all() and r.counts[-1] == 0
    assert torch.equal(r.counts, torch.bincount(ids.flatten(), minlength=7))
    rows = r.row_of.flatten()
    assert rows.unique().numel() == rows.numel()  # each (token, slot) has its own row
    e_of_row = torch.searchsorted(r.offsets[1:], rows, right=True)
    assert torch.equal(e_of_row, ids.flatten())  # ... inside its expert's segment
    assert torch.equal(r.src_token[rows].long(), torch.arange(50).repeat_interleave(3))
    assert (r.src_token >= 0).sum() == rows.numel()


def test_make_routing_lists_the_64_row_tiles_that_hold_routed_rows_first():
    # what a grouped GEMM with 64-row tiles computes (the rest it writes as zeros): every tile with a
    # routed row, in row order, and no tile of padding alone
    ids, _ = _routing_inputs()
    r = make_routing(ids, 7)
    tiles, live = r.row_tiles
    tiles, live = tiles.long(), int(live)
    assert torch.equal(tiles.sort().values, torch.arange(r.padded_rows // 64))  # each tile once
    routed_tiles = (r.row_of.flatten() // 64).unique()  # sorted
    assert torch.equal(tiles[:live], routed_tiles)
    assert (r.src_token.view(-1, 64)[tiles[live:]] < 0).all()  # the rest: padding rows only
    assert live < r.padded_rows // 128 * 2 - 1  # some segment's second half is padding alone here


def test_moe_reference_pipeline_matches_dense_definition():
    ids, tw = _routing_inputs()
    x, w = torch.randn(50, 192), torch.randn(7, 160, 192) / 14
    r = make_routing(ids, 7)
    out = grouped_gemm_ref(permute_ref(x, r), w, r)
    assert rel(combine_ref(out, tw, r), moe_ref(x, ids, tw, w)) < 1e-5
    xq, xs = act_quant_ref(x)
    wq, ws = zip(*(weight_quant_ref(w[e]) for e in range(7)))
    out8 = grouped_gemm_ref(permute_ref(xq, r), torch.stack(wq), r, permute_ref(xs, r),
                            torch.stack(ws), out_dtype=torch.float32)
    assert rel(combine_ref(out8, tw, r), moe_ref(x, ids, tw, w)) < FP8_BOUND


def test_combine_backward_is_the_gradient_of_combine():
    ids, tw = _routing_inputs()
    r = make_routing(ids, 7)
    out = torch.randn(r.padded_rows, 96, dtype=torch.float64, requires_grad=True)
    tw = tw.double().requires_grad_()
    dy = torch.randn(50, 96, dtype=torch.float64)
    combine_ref(out, tw, r).backward(dy)
    d_out, d_w = combine_backward_ref(dy, out.detach(), tw.detach(), r)
    assert torch.allclose(d_out, out.grad) and torch.allclose(d_w, tw.grad)
    assert not d_out[r.src_token < 0].any()  # padding rows get no gradient
    assert combine_backward_ref(dy, None, tw.detach(), r)[1] is None


@pytest.mark.parametrize("fp8", [False, True])
def test_grouped_experts_forward_and_grads(fp8):
    T, D, I, E, k = 40, 128, 96, 5, 2
    ex = GroupedExperts(E, D, I, init_std=0.1)
    ex.fp8 = fp8
    ids, tw = _routing_inputs(T, k, E)
    x = torch.randn(T, D, requires_grad=True)
    tw.requires_grad_()
    y = ex(x, ids, tw)
    dy = torch.randn_like(y)
    y.backward(dy)
    p64 = [p.detach().double().requires_grad_() for p in (ex.w1, ex.w2, ex.w3)]
    x64, tw64 = x.detach().double().requires_grad_(), tw.detach().double().requires_grad_()
    y64 = experts_ref(x64, ids, tw64, *p64)
    y64.backward(dy.double())
    bound = 0.1 if fp8 else 1e-5  # two FP8 products in a row (w1/w3, then w2)
    assert rel(y, y64) < bound
    assert rel(x.grad, x64.grad) < bound
    assert rel(tw.grad, tw64.grad) < bound
    for p, q in zip((ex.w1, ex.w2, ex.w3), p64):
        assert rel(p.grad, q.grad) < bound


@pytest.mark.parametrize("I", [128, 96])  # gate and up stacked into one FP8 weight, or not (96 % 128)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp8_expert_mlp_quantizes_each_operand_once_and_computes_as_the_composition(dtype, I, monkeypatch):
    # kernels/experts.py FP8SwiGLUExpertsFunction: the rows quantized once for w1 and w3, SwiGLU's
    # product and its gradients made inside their quantizations; emulated, it must give what three
    # FP8 grouped linears around the eager SwiGLU gave, bit for bit (dx: see the dense test above).
    # Stacked, gate and up run as one grouped GEMM forward and one dgrad
    import dataclasses

    import torch.nn.functional as F

    import kernels.experts as ex
    import kernels.fp8_linear as fl
    from kernels.experts import FP8SwiGLUExpertsFunction, GroupedLinearFunction

    T, D, E, k = 40, 384, 5, 2
    ids, _ = _routing_inputs(T, k, E)
    r = make_routing(ids, E)
    P = r.src_token.shape[0]
    x, do = torch.randn(P, D, dtype=dtype), torch.randn(P, D, dtype=dtype)
    w1, w3 = (torch.randn(E, I, D, dtype=dtype) * 0.1 for _ in range(2))
    w2 = torch.randn(E, D, I, dtype=dtype) * 0.1
    quantized = []
    base = fl.EMULATED_OPS
    monkeypatch.setattr(fl, "EMULATED_OPS", dataclasses.replace(
        base, act_dual=lambda t: quantized.append(tuple(t.shape)) or base.act_dual(t)))
    gemms = []  # the grouped GEMMs' output widths, forward and dgrad (the wgrad is another kernel)
    monkeypatch.setattr(ex, "grouped_gemm_ref", lambda a, w, *more, **kw: gemms.append(w.shape[1]) or
                        grouped_gemm_ref(a, w, *more, **kw))
    results, row_quantizations, widths = [], [], []
    for fused in (False, True):
        quantized.clear()
        gemms.clear()
        xi, a, b, c = (t.clone().requires_grad_() for t in (x, w1, w3, w2))
        if fused:
            o = FP8SwiGLUExpertsFunction.apply(xi, a, b, c, r, True)
        else:
            h1, h3 = (GroupedLinearFunction.apply(xi, w, r, True, True) for w in (a, b))
            o = GroupedLinearFunction.apply(F.silu(h1) * h3, c, r, True, True)
        row_quantizations.append(quantized.count((P, D)))  # the forward's, of the rows x
        o.backward(do)
        widths.append(sorted(gemms))
        results.append((o.detach(), xi.grad, a.grad, b.grad, c.grad))
    assert row_quantizations == [2, 1]
    assert widths[0] == sorted([I, I, D, I, D, D])  # forward: h1, h3, out; dgrad: d act, dx3, dx1
    assert widths[1] == (sorted([2 * I, D, I, D]) if I % 128 == 0 else widths[0])  # stacked: [h1 | h3], out; d act, dx
    for name, p, q in zip(("out", "dx", "dw1", "dw3", "dw2"), *results):
        if name == "dx" and I % 128 == 0:
            assert rel(p, q) < ONE_ROUNDING[dtype], name
        else:
            assert torch.equal(p, q), name


def test_the_trainers_fp8_experts_on_one_rank_are_the_grouped_experts():
    # the trainer's FP8 experts (an expert-parallel wrapper at ep_size 1, set by `use_fp8_experts`)
    # dispatch once, through the grouped kernels' own permutation and combine: the same output and
    # gradients as GroupedExperts on the same weights, bit for bit, in the trainer's bf16 (the old
    # path weighted each expert's output in bf16 before summing; combine sums in float32)
    from types import SimpleNamespace

    from training import distributed
    from training.expert_parallel import ExpertParallelExperts

    distributed.init()  # the wrapper lives on DeepSpeed's expert-parallel groups
    T, D, I, E, k = 40, 128, 96, 5, 2
    ex = GroupedExperts(E, D, I, init_std=0.1).to(torch.bfloat16)
    ex.fp8 = True
    wrapped = ExpertParallelExperts(SimpleNamespace(w1=ex.w1, w2=ex.w2, w3=ex.w3), ep_size=1)
    wrapped.fp8 = "emulate"
    ids, tw = _routing_inputs(T, k, E)
    x = torch.randn(T, D, dtype=torch.bfloat16)
    dy = torch.randn(T, D, dtype=torch.bfloat16)
    grads = []
    for module in (ex, wrapped):
        xi, twi = x.clone().requires_grad_(), tw.clone().requires_grad_()
        y = module(xi, ids, twi)
        y.backward(dy)
        b = module.block if module is wrapped else module
        grads.append([y.detach(), xi.grad, twi.grad, b.w1.grad, b.w2.grad, b.w3.grad])
    for name, a, b in zip(("y", "dx", "d topk_w", "dw1", "dw2", "dw3"), *grads):
        assert torch.equal(a, b), name


def test_act_quant_dispatch_is_reference_on_cpu():
    x = torch.randn(8, 256)
    assert all(torch.equal(a.float(), b.float()) for a, b in zip(act_quant(x), act_quant_ref(x)))


def test_converter_on_the_project_model():
    model_mod = pytest.importorskip("training.model.model")
    from kernels.experts import GroupedExperts
    from tests.test_model import tiny
    m = model_mod.Transformer(tiny()).train()
    keys = list(m.state_dict())
    names = convert_to_fp8(m)
    assert any(n.endswith("mlp.experts") for n in names)
    assert all(isinstance(m.get_submodule(n), GroupedExperts) for n in names if n.endswith("experts"))
    assert "lm_head" not in names and type(m.lm_head) is nn.Linear
    assert list(m.state_dict()) == keys
    out = m(torch.randint(0, 61, (2, 16)))
    logits = out.logits if hasattr(out, "logits") else out[0]
    logits.float().square().mean().backward()
    assert m.get_submodule(next(n for n in names if n.endswith("experts"))).w1.grad is not None


def test_fp8_project_model_compiles_without_graph_breaks_and_matches_eager():
    # the trainer compiles every block (training/engine.py); the FP8 layers are custom ops inside the
    # block's graph (fullgraph=True fails on any graph break), and compile changes no FP8 number:
    # AOTAutograd's graphs without code generation give the eager model's loss and gradients bit for
    # bit, in training and under no_grad (validation)
    model_mod = pytest.importorskip("training.model.model")
    from tests.test_model import tiny
    torch.manual_seed(0)
    eager = model_mod.Transformer(tiny()).train()
    compiled = model_mod.Transformer(tiny()).train()
    compiled.load_state_dict(eager.state_dict())
    for m in (eager, compiled):
        convert_to_fp8(m)
    for blk in compiled.modules():
        if isinstance(blk, model_mod.Block):
            blk.compile(backend="aot_eager", fullgraph=True)
    ids = torch.randint(0, 61, (2, 17))
    grads, inference = [], []
    for m in (eager, compiled):
        out = m(ids[:, :-1], ids[:, 1:])
        out.loss.backward()
        grads.append((out.loss.detach(), [p.grad.clone() for p in m.parameters() if p.grad is not None]))
        with torch.no_grad():
            inference.append(m(ids[:, :-1], ids[:, 1:]).loss)
    assert torch.equal(grads[0][0], grads[1][0])
    assert len(grads[0][1]) == len(grads[1][1]) and all(torch.equal(a, b) for a, b in zip(grads[0][1], grads[1][1]))
    assert torch.equal(inference[0], inference[1])


def _fp8_layer_cases():
    """(name, inputs, layer as a function of them) for each FP8 layer that has a custom op."""
    from kernels.experts import GroupedExperts
    from kernels.fp8_linear import fp8_swiglu
    torch.manual_seed(0)
    bf = torch.bfloat16
    x = torch.randn(300, 256, dtype=bf)  # 300 tokens: not a multiple of 128
    lin = FP8Linear.from_linear(nn.Linear(256, 384).to(bf))
    ids = torch.stack([torch.randperm(8)[:2] for _ in range(300)])
    topk_w = torch.rand(300, 2)
    cases = [("linear", [x, lin.weight, lin.bias], lambda x, *_: lin(x))]
    # SwiGLU widths: 384 and 256 stack gate and up into one FP8 weight (kernels/fp8_linear.py
    # gate_up_stacked), 320 and 192 do not
    for name, inter in (("swiglu", 384), ("swiglu unstacked", 320)):
        gate, up, down = (FP8Linear.from_linear(nn.Linear(i, o, bias=False).to(bf))
                          for i, o in ((256, inter), (256, inter), (inter, 256)))
        cases.append((name, [x, gate.weight, up.weight, down.weight],
                      lambda x, *_, m=(gate, up, down): fp8_swiglu(x, *m)))
    for name, inter in (("experts", 256), ("experts unstacked", 192)):
        experts = GroupedExperts(8, 256, inter).to(bf)
        experts.fp8 = True
        cases.append((name, [x, topk_w, experts.w1, experts.w3, experts.w2],
                      lambda x, w, *_, m=experts: m(x, ids, w)))
    return cases


FP8_LAYERS = ["linear", "swiglu", "swiglu unstacked", "experts", "experts unstacked"]


@pytest.mark.parametrize("case", FP8_LAYERS)
@pytest.mark.parametrize("frozen", [(), (0,), (1,)])
def test_fp8_layer_custom_op_matches_its_autograd_function(case, frozen):
    # under torch.compile each FP8 layer is one custom op (kernels/fp8_linear.py, kernels/experts.py):
    # the same outputs and gradients as the eager autograd Function, bit for bit, whichever inputs
    # want a gradient (frozen: inputs that do not; the op then keeps less for its backward)
    _, inputs, layer = next(c for c in _fp8_layer_cases() if c[0] == case)
    for i, t in enumerate(inputs):
        t.requires_grad_(i not in frozen)
    results = []
    for fn in (layer, torch.compile(layer, backend="aot_eager", fullgraph=True)):
        for t in inputs:
            t.grad = None
        y = fn(*inputs)
        y.float().square().sum().backward()
        results.append([y.detach(), *(t.grad for t in inputs)])
    for a, b in zip(*results):
        assert (a is None and b is None) or torch.equal(a, b)
    assert sum(g is not None for g in results[1][1:]) == len(inputs) - len(frozen)


@pytest.mark.parametrize("case", FP8_LAYERS)
def test_fp8_custom_op_backward_takes_the_forward_fp8_weights(case, monkeypatch):
    # inside a CUDA-graph capture (pretrain.cuda_graphs with compile) the weight cache is bypassed, and
    # a backward op that fetched the FP8 weights again quantized each weight twice per micro-step
    # (BENCHMARKS.md, 2026-12-05, thirteenth session). The forward op hands its copies over: with the
    # cache emptied between forward and backward, as a capture sees it, the backward quantizes none
    from kernels.weight_cache import invalidate_fp8_weights
    calls = count_calls(monkeypatch, "EMULATED_OPS", ("weight", "weight_dual"))
    _, inputs, layer = next(c for c in _fp8_layer_cases() if c[0] == case)
    for t in inputs:
        t.requires_grad_(True)
    y = torch.compile(layer, backend="aot_eager", fullgraph=True)(*inputs)
    assert calls  # the forward quantized the weights
    calls.clear()
    invalidate_fp8_weights()
    y.float().square().sum().backward()
    assert calls == [] and all(t.grad is not None for t in inputs)


@pytest.mark.parametrize("case", FP8_LAYERS)
def test_fp8_layers_under_no_grad_quantize_for_the_forward_only(case, monkeypatch):
    # validation, evaluation and rollouts run under no_grad, where an autograd Function's
    # needs_input_grad still follows requires_grad: the layers take their custom op there, which
    # makes no backward layout (x^T, the SwiGLU product's transposed tiles) and gives the same output
    calls = count_backward_layouts(monkeypatch, "EMULATED_OPS")
    _, inputs, layer = next(c for c in _fp8_layer_cases() if c[0] == case)
    for t in inputs:
        t.requires_grad_(True)
    trained = layer(*inputs)
    assert calls  # training makes the backward's layouts
    calls.clear()
    with torch.no_grad():
        inferred = layer(*inputs)
    assert calls == [] and not inferred.requires_grad
    assert torch.equal(trained.detach(), inferred)


@pytest.mark.parametrize("op,args", [
    ("fp8_linear", lambda x, w: (x, w[0], "auto", True, [True, True])),
    ("fp8_linear", lambda x, w: (x, w[0], "auto", True, [False, True])),
    ("fp8_swiglu", lambda x, w: (x, *w[1:4], "auto", True, [True] * 4)),
    ("fp8_swiglu", lambda x, w: (x, *w[1:4], "auto", True, [False, False, True, True])),
    ("fp8_swiglu", lambda x, w: (x, *w[9:12], "auto", True, [True] * 4)),  # gate and up stacked
    ("fp8_experts", lambda x, w: (x, w[4], w[5], *w[6:9], True, [True] * 5)),
    ("fp8_experts", lambda x, w: (x, w[4], w[5], *w[6:9], True, [False, False, True, False, True])),
    ("fp8_experts", lambda x, w: (x, w[4], w[5], *w[12:], True, [True] * 5))])  # stacked
def test_fp8_custom_ops_pass_torch_opcheck(op, args):
    # torch.library.opcheck: the fake implementations give the real outputs' shapes, dtypes, strides
    # and aliasing, and the autograd registration is complete. (Its schema and AOT-dispatch checks
    # compare outputs with ops that CPU torch lacks for float8; the compile tests above cover AOT.)
    torch.manual_seed(0)
    bf = torch.bfloat16
    x = torch.randn(200, 256, dtype=bf, requires_grad=True)
    w = [torch.randn(384, 256, dtype=bf), torch.randn(320, 256, dtype=bf), torch.randn(320, 256, dtype=bf),
         torch.randn(256, 320, dtype=bf), torch.stack([torch.randperm(8)[:2] for _ in range(200)]), torch.rand(200, 2),
         torch.randn(8, 192, 256, dtype=bf) * 0.05, torch.randn(8, 192, 256, dtype=bf) * 0.05,
         torch.randn(8, 256, 192, dtype=bf) * 0.05,
         torch.randn(384, 256, dtype=bf), torch.randn(384, 256, dtype=bf), torch.randn(256, 384, dtype=bf),
         torch.randn(8, 128, 256, dtype=bf) * 0.05, torch.randn(8, 128, 256, dtype=bf) * 0.05,
         torch.randn(8, 256, 128, dtype=bf) * 0.05]
    w = [t.requires_grad_(True) if t.is_floating_point() else t for t in w]
    result = torch.library.opcheck(getattr(torch.ops.seekflow, op), args(x, w),
                                   test_utils=("test_autograd_registration", "test_faketensor"))
    assert result == {"test_autograd_registration": "SUCCESS", "test_faketensor": "SUCCESS"}
