"""The shared DeepSpeed engine and process setup: the gradient norm a trainer logs is the one of the step
it took; a process started alone survives a taken port."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pretrain_fixtures import RENDEZVOUS

ROOT = Path(__file__).resolve().parents[1]

# One process per engine kind: DeepSpeed initialises torch.distributed, which must not leak into
# the test process. For each step, a plain torch copy of the current weights gives the true norm.
_SCRIPT = r'''
import sys
import torch
from torch import nn
import deepspeed
from training import distributed
from training.engine import optimizer_step

zero = int(sys.argv[1])
distributed.init()
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 4))
cfg = {"train_batch_size": 4, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1,
       "gradient_clipping": 1.0, "zero_optimization": {"stage": zero}, "steps_per_print": 10**9}
engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=0.05), config=cfg)
for step in range(4):
    x = torch.randn(4, 16) * (step + 1) ** 2  # norms that differ from step to step, above the clip
    copy = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 4))
    copy.load_state_dict(engine.module.state_dict())
    copy(x).square().sum().backward()
    expected = torch.sqrt(sum(p.grad.double().pow(2).sum() for p in copy.parameters())).item()
    engine.backward(engine(x).square().sum())
    logged = optimizer_step(engine, engine.module, measure_norm=True)
    assert abs(logged - expected) <= 1e-4 * expected, f"zero {zero}, step {step}: logged {logged}, true {expected}"
print("norms ok")
'''


@pytest.mark.parametrize("zero", [0, 1])
def test_logged_gradient_norm_is_the_steps_own(zero):
    # ZeRO keeps the norm inside its optimizer (read after step(); before, it is the previous
    # step's); the plain fp32 engine keeps none (summed from the gradients before step())
    env = {k: v for k, v in os.environ.items() if k not in RENDEZVOUS}
    env["PYTHONPATH"] = str(ROOT)
    res = subprocess.run([sys.executable, "-c", _SCRIPT, str(zero)], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0 and "norms ok" in res.stdout, res.stdout[-2000:] + res.stderr[-4000:]


_BUSY_PORT_SCRIPT = r'''
import os
import socket
import sys
from training import distributed

busy = socket.socket()
busy.bind(("127.0.0.1", 0))
busy.listen()
taken = busy.getsockname()[1]
if sys.argv[1] == "inherited":  # a parent that holds its own store left its rendezvous variables behind
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(taken))
else:  # the port picked here is taken before the store binds it
    real = distributed._free_port
    picks = iter([taken])
    distributed._free_port = lambda: next(picks, None) or real()
dist = distributed.init()
assert dist.world_size == 1 and int(os.environ["MASTER_PORT"]) != taken
print("init ok")
'''


@pytest.mark.parametrize("how", ["inherited", "picked"])
def test_a_process_alone_takes_another_port_when_its_port_is_taken(how):
    env = {k: v for k, v in os.environ.items() if k not in RENDEZVOUS}
    env["PYTHONPATH"] = str(ROOT)
    res = subprocess.run([sys.executable, "-c", _BUSY_PORT_SCRIPT, how], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0 and "init ok" in res.stdout, res.stdout[-2000:] + res.stderr[-4000:]


_CHOICES_SCRIPT = r'''
import json, os, sys
from pathlib import Path
from kernels import autoselect
from training.entrypoint import run_stage
from training.launch import StageConfig

out = Path(sys.argv[1])
stage = StageConfig(stage="v3_base", profile={}, output_dir=str(out))
seen = run_stage(stage, 0, lambda dist, report: (autoselect.record_choice(("gemm", 4096), "cublas"),
                                                 os.environ[autoselect.CHOICES_ENV])[1])
print(json.dumps({"seen": seen, "after": os.environ.get(autoselect.CHOICES_ENV)}))
'''


@pytest.mark.parametrize("user_file", [False, True])
def test_a_stage_records_its_kernel_choices_beside_its_checkpoints(tmp_path, user_file):
    import json

    env = {k: v for k, v in os.environ.items() if k not in RENDEZVOUS and k != "SEEKFLOW_KERNEL_CHOICES"}
    env["PYTHONPATH"] = str(ROOT)
    if user_file:
        env["SEEKFLOW_KERNEL_CHOICES"] = str(tmp_path / "mine.json")
    res = subprocess.run([sys.executable, "-c", _CHOICES_SCRIPT, str(tmp_path / "run")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    result = json.loads(res.stdout.strip().splitlines()[-1])
    expected = tmp_path / "mine.json" if user_file else tmp_path / "run" / "checkpoints" / "kernel_choices.json"
    assert result["seen"] == str(expected)
    # a resumed run reads the same choice back (kernels/autoselect.py keys it by machine)
    recorded = json.loads(expected.read_text())
    assert [choices for choices in recorded.values()] == [{str(("gemm", 4096)): "cublas"}]
    # the variable is the caller's again afterwards: a later in-process stage records in its own folder
    assert result["after"] == (str(expected) if user_file else None)


_ACCUMULATOR_SCRIPT = r'''
import dataclasses, gc, sys
import torch
from deepspeed.utils import safe_get_full_fp32_param
from torch.autograd.graph import _get_grad_fn_or_grad_acc
from training import distributed
from training.engine import build_engine, release_gradient_accumulators
from training.settings import load_profile
from tests.model_fixtures import tiny_model_config
from training.model import Transformer

def kept_alive(params):
    # a gradient accumulator someone else holds survives our reference: the mark set on it stays
    for p in params:
        node = _get_grad_fn_or_grad_acc(p)
        node.metadata["mark"] = True
        del node
    gc.collect()
    return sum(_get_grad_fn_or_grad_acc(p).metadata.pop("mark", False) for p in params)

dist = distributed.init()
torch.manual_seed(0)
model = Transformer(tiny_model_config())
cfg = dataclasses.replace(load_profile("tiny").pretrain, zero_stage=int(sys.argv[1]), global_batch_size=2,
                          micro_batch_size=2)
engine, _, _ = build_engine(model, cfg, dist, "fp32")
params = [p for p in engine.module.parameters() if p.requires_grad]
ids = torch.randint(0, 61, (2, 9))
engine.backward(engine(ids[:, :-1], ids[:, 1:]).loss)
engine.step()
# a resumed run: loading optimizer states makes DeepSpeed's links anew
engine.save_checkpoint(sys.argv[2], tag="t")
engine.load_checkpoint(sys.argv[2], tag="t", load_optimizer_states=True)
release_gradient_accumulators(engine.module)
print("kept alive", kept_alive(params))
before = [p.detach().clone() for p in params]
engine.backward(engine(ids[:, :-1], ids[:, 1:]).loss)
engine.step()
# the optimizer's links to its master weights still read the parameters' memory
assert any(not torch.equal(a, p) for a, p in zip(before, params)), "the step changed no weight"
for p in params:
    master = safe_get_full_fp32_param(p)
    assert master is None or torch.allclose(master, p.float(), atol=1e-6), "master and model weights part"
print("step ok")
'''


@pytest.mark.parametrize("zero", [0, 1, 2])
def test_no_gradient_accumulator_stays_alive_before_a_capture(zero, tmp_path):
    # training/engine.py release_gradient_accumulators (graphs.py calls it before capturing): ZeRO's
    # links to the master weights held every parameter's AccumulateGrad node from the engine's
    # construction and from each checkpoint load on, which made the CUDA-graph capture of backward
    # (pretrain.cuda_graphs) fail on the GPU; the links must keep working after
    env = {k: v for k, v in os.environ.items() if k not in RENDEZVOUS}
    env["PYTHONPATH"] = str(ROOT)
    res = subprocess.run([sys.executable, "-c", _ACCUMULATOR_SCRIPT, str(zero), str(tmp_path)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and "step ok" in res.stdout, res.stdout[-2000:] + res.stderr[-4000:]
    assert "kept alive 0" in res.stdout, res.stdout[-2000:]


def test_replayed_gradients_accumulate_in_memory_of_their_own():
    # training/graphs.py: a captured backward hands each parameter's gradient over in the graph's static
    # buffer, which the next replay overwrites. The hook clones it while .grad is None (autograd would
    # make the buffer .grad itself) and lets later micro-steps add into .grad in place: the sum of the
    # micro-steps, with one clone per accumulation instead of one per micro-step
    import functools

    import torch

    from training.graphs import _own_memory_if_stolen

    static = torch.zeros(3)  # the graph's gradient buffer

    class Replay(torch.autograd.Function):
        @staticmethod
        def forward(ctx, w):
            return w * 1.0

        @staticmethod
        def backward(ctx, g):
            static.copy_(g)
            return static.detach()  # as a graphed callable returns it: a fresh tensor on the buffer

    clones = []  # per micro-step: whether the hook handed autograd a copy
    w = torch.zeros(3, requires_grad=True)
    own_memory = functools.partial(_own_memory_if_stolen, w)

    def hook(g):
        out = own_memory(g)
        clones.append(out is not g)
        return out

    w.register_hook(hook)
    for scale in (1.0, 10.0, 100.0):
        (Replay.apply(w) * torch.tensor([1.0, 2.0, 3.0])).sum().mul(scale).backward()
    assert torch.equal(w.grad, torch.tensor([111.0, 222.0, 333.0]))
    assert w.grad.data_ptr() != static.data_ptr()
    assert clones == [True, False, False]


# A trainer on its command line (stage_main), inside a section that holds a lock file the way torch's
# extension builds hold theirs (torch.utils.file_baton, released in a `finally`); it says when it is in.
_HOLDS_LOCK_SCRIPT = r'''
import sys, time
from pathlib import Path
from torch.utils.file_baton import FileBaton
from training.entrypoint import run_stage, stage_main
from training.launch import StageConfig

def train(stage):
    def body(dist, report):
        baton = FileBaton(str(Path(stage.output_dir) / "lock"))
        assert baton.try_acquire()
        try:
            (Path(stage.output_dir) / "inside").touch()
            time.sleep(120)
        finally:
            baton.release()
    return run_stage(stage, 1, body)

sys.exit(stage_main(train, "holds a lock")(sys.argv[1:]))
'''


def test_a_trainer_stopped_with_sigterm_unwinds_and_says_so(tmp_path):
    """SIGTERM is how DeepSpeed's launcher (on a Dagster cancel), torchrun, Slurm and Kubernetes stop a
    trainer. It must unwind like Ctrl-C: a lock left behind in torch's extension cache makes every later
    DeepSpeed start on that machine wait forever."""
    import signal
    import time

    from training.launch import StageConfig

    out = tmp_path / "run"
    config = StageConfig(stage="v3_base", profile={}, output_dir=str(out)).write(tmp_path / "stage.json")
    env = {k: v for k, v in os.environ.items() if k not in RENDEZVOUS}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.Popen([sys.executable, "-c", _HOLDS_LOCK_SCRIPT, "--config", str(config)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (out / "inside").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (out / "inside").exists(), proc.communicate(timeout=60)[0][-4000:] if proc.poll() is not None else "late"
        assert (out / "lock").exists()
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=60)[0]
    finally:
        proc.kill()  # a failed step above leaves no trainer behind (a no-op once it has exited)
        proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, output[-4000:]  # as a shell reports a process killed by it
    assert not (out / "lock").exists(), "the lock outlived the trainer"
    assert "stopped by SIGTERM" in (out / "logs" / "rank0.log").read_text()
