#!/usr/bin/env bash
# Build a wheelhouse for GPU nodes without internet that already carry torch, triton and the usual
# scientific stack (numpy, transformers, tokenizers, pyyaml, matplotlib, ...).
#
#   infra/wheelhouse.sh [OUT_DIR=.whl] [PYTHON_VERSIONS="3.12"]        (run where PyPI is reachable)
#   then on the node:   pip install --no-index --find-links OUT_DIR -r OUT_DIR/requirements.txt
#
# MODE=training (the default) fetches only what `python -m training.pretrain` imports and such a node
# lacks: deepspeed, pydantic (deepspeed's config), datatrove (the shard loader), dagster-pipes (the
# report channel), and their own missing dependencies. A few MB: small enough to carry to a node.
# MODE=all fetches the whole project (dagster, mlflow, spacy, ...) plus the project's own wheel, for a
# node that runs the pipeline too (hundreds of MB).
#
# deepspeed ships only as an sdist; with DS_BUILD_OPS=0 it builds as a pure wheel and compiles its
# ops on first use (the node needs nvcc/g++ for those, e.g. FusedAdam; Seekflow passes a torch
# optimizer, so training needs none). Versions are pinned to what this machine's environment runs
# (so the node runs the versions CI tested); compiled wheels are fetched for every Python version
# listed, and pip on the node picks the one that fits its interpreter.
set -euo pipefail
OUT=${1:-.whl}
PYS=${2:-3.12}
MODE=${MODE:-training}
PY=${PYTHON:-python}
mkdir -p "$OUT"
repo=$(cd "$(dirname "$0")/.." && pwd)
platforms=(--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64
           --platform any)

pin() {  # "name==version" as installed here, else the bare name
  local v
  v=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1" 2>/dev/null) \
    && echo "$1==$v" || echo "$1"
}

ds=$(pin deepspeed)
DS_BUILD_OPS=0 "$PY" -m pip wheel --no-deps --no-build-isolation --wheel-dir "$OUT" "$ds" \
  || DS_BUILD_OPS=0 "$PY" -m pip wheel --no-deps --wheel-dir "$OUT" "$ds"

if [ "$MODE" = all ]; then
  "$PY" -m pip wheel --no-deps --wheel-dir "$OUT" "$repo"
  reqs=$("$PY" - "$repo/pyproject.toml" <<'PY'
import sys, tomllib
deps = tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]
skip = ("torch", "triton", "deepspeed")  # the node's own, and the wheel built above
print("\n".join(d for d in deps if not d.split(">")[0].split("=")[0].split("[")[0].strip().startswith(skip)))
PY
)
  extra=(hjson ninja numpy packaging psutil py-cpuinfo "pydantic>=2" msgpack einops tqdm)
  for py in $PYS; do
    echo "$reqs" | "$PY" -m pip download --only-binary=:all: --python-version "$py" "${platforms[@]}" \
      --dest "$OUT" -r /dev/stdin "${extra[@]}"
  done
  { echo "$reqs"; printf '%s\n' "${extra[@]}" deepspeed seekflow; } > "$OUT/requirements.txt"
else
  # what the node lacks, pinned; resolved without their dependencies, which the node has (torch,
  # numpy, huggingface-hub, fsspec, tqdm, psutil, msgpack, ninja, einops, py-cpuinfo, ...)
  missing=(pydantic pydantic_core annotated-types typing-inspection typing_extensions hjson
           datatrove dill loguru multiprocess dagster-pipes)
  pins=()
  for p in "${missing[@]}"; do pins+=("$(pin "$p")"); done
  for py in $PYS; do
    "$PY" -m pip download --no-deps --only-binary=:all: --python-version "$py" "${platforms[@]}" \
      --dest "$OUT" "${pins[@]}"
  done
  printf '%s\n' "$ds" "${pins[@]}" > "$OUT/requirements.txt"
fi
echo "wheelhouse: $(ls "$OUT" | wc -l) files, $(du -sh "$OUT" | cut -f1) in $OUT"
