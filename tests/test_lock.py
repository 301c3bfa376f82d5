"""The lock `make setup` installs from (infra/lock/): it must satisfy pyproject.toml, or setup fails
with pip's ResolutionImpossible on the Python it was written for."""

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")  # Python 3.11 and later
ROOT = Path(__file__).resolve().parents[1]
LOCKS = sorted((ROOT / "infra" / "lock").glob("python*.txt"))


def pinned(lock: Path) -> dict[str, Version]:
    pins = {}
    for n, line in enumerate(lock.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;]+)", line.strip())
        assert m, f"{lock.name}:{n}: {line!r} is not a `name==version` pin"
        pins[canonicalize_name(m[1])] = Version(m[2])
    return pins


def test_there_is_a_lock():
    assert LOCKS, "infra/lock/ holds no python*.txt: `make lock` writes one"


@pytest.mark.parametrize("lock", LOCKS, ids=[p.name for p in LOCKS])
def test_the_lock_pins_every_dependency_within_pyproject_ranges(lock):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = pinned(lock)
    python = lock.stem.removeprefix("python")
    wanted = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]
    for req in wanted:
        name = canonicalize_name(req.name)
        if name == "torch":  # installed first by the Makefile, the machine's build: not in the lock
            assert name not in pins, f"{lock.name} pins torch: the Makefile's TORCH_SPEC chooses its build"
            continue
        if req.marker and not req.marker.evaluate({"python_version": python}):
            continue
        assert name in pins, f"{lock.name} does not pin {req.name}, a dependency in pyproject.toml"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{lock.name} pins {req.name}=={pins[name]}, outside pyproject.toml's {req.specifier}")
    assert "seekflow" not in pins, f"{lock.name} pins seekflow itself"
