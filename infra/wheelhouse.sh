#!/usr/bin/env bash
# Build a wheelhouse for GPU nodes without internet that already carry torch and triton.
#
#   infra/wheelhouse.sh [OUT_DIR=.whl] [PYTHON_VERSION=3.12] [PLATFORM=manylinux2014_x86_64]
#   then on the node:  pip install --no-index --find-links OUT_DIR -e . (or: seekflow from OUT_DIR)
#
# deepspeed ships only as an sdist; with DS_BUILD_OPS=0 it builds as a pure wheel and compiles its
# ops on first use (the node needs nvcc/g++ for those, e.g. FusedAdam; Seekflow passes a torch
# optimizer, so training needs none). Every other dependency is downloaded as a binary wheel for
# the node's Python and platform, except torch, triton and NVIDIA's runtime wheels, which the
# node has (pass ALL=1 to fetch those too).
set -euo pipefail
OUT=${1:-.whl}
PY=${2:-3.12}
PLATFORM=${3:-manylinux2014_x86_64}
mkdir -p "$OUT"
repo=$(cd "$(dirname "$0")/.." && pwd)

DS_BUILD_OPS=0 python -m pip wheel --no-deps --wheel-dir "$OUT" "deepspeed>=0.16"
python -m pip wheel --no-deps --wheel-dir "$OUT" "$repo"

# the project's dependency list, from pyproject.toml, minus what the node carries
reqs=$(python - "$repo/pyproject.toml" "${ALL:-0}" <<'PY'
import sys, tomllib
deps = tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]
skip = () if sys.argv[2] == "1" else ("torch", "triton", "deepspeed")
print("\n".join(d for d in deps if not d.split(">")[0].split("=")[0].split("[")[0].strip().startswith(skip)))
PY
)
echo "$reqs" > "$OUT/requirements.txt"
python -m pip download --only-binary=:all: --python-version "$PY" --platform "$PLATFORM" \
    --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --platform any \
    --dest "$OUT" -r "$OUT/requirements.txt"
# deepspeed's own runtime requirements (it was built with --no-deps)
python -m pip download --only-binary=:all: --python-version "$PY" --platform "$PLATFORM" \
    --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --platform any \
    --dest "$OUT" hjson ninja "numpy" packaging psutil py-cpuinfo "pydantic>=2" msgpack einops tqdm
echo "wheelhouse: $(ls "$OUT" | wc -l) files in $OUT"
