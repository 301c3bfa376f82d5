import os

import pytest

# NOTE: no MLflow usage data leaves the machine during tests
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture
def seekflow_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("SEEKFLOW_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (home / "dagster").mkdir(parents=True)
    return home


@pytest.fixture
def serial_executor():
    """Datatrove in-process, one task: no worker pools in tests (fast, and counts are exact anyway)."""
    from training.settings import ExecutorConfig

    return ExecutorConfig(kind="local", tasks=1, workers=1)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny matmuls: one OpenMP thread is far faster than two contending for a busy 2-core box."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def fresh_seed():
    """torch's default seed is fixed: draw a new one per test and print it for reproduction."""
    import random

    import torch

    seed = random.SystemRandom().randrange(2**31)
    torch.manual_seed(seed)
    print(f"seed={seed}")


@pytest.fixture(scope="module")
def bench():
    """benchmarks/bench_pretrain.py as a module (benchmarks/ is not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_pretrain.py"
    spec = importlib.util.spec_from_file_location("bench_pretrain", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
