#!/usr/bin/env bash
# The GPU check of packed LoRA trials (raysem/bench/gpu_check.py): bf16 matmul peak, naive / resident /
# packed trials per hour and MFU on the embedded model's shape, a packed step on a 7B-shaped Llama, and a
# DeepSpeed ZeRO-2 step when deepspeed imports, the study's own unit functions (ResidentModel, base records,
# run_trial, run_packed_trials) against the plan, and CUDA bf16 against CPU float32 answers and losses.
# One table, then one JSON line. Under 8 minutes on one GPU.
#
#   bash benchmarks/gpu_check.sh --prepare   # here (network, .venv): model config + tokenizer, ZsRE, wheels
#   bash benchmarks/gpu_check.sh             # on the GPU machine (no network; torch, transformers, peft there)
#   bash benchmarks/gpu_check.sh --dry-run   # every step on CPU with tiny shapes, in seconds
#
# Everything prepared lands in benchmarks/.gpu_check (git-ignored, a few MiB): the model's config and
# tokenizer files (no weights: the check initialises the model at random), ZsRE's eval split, and the
# wheels of what the GPU machine may lack (pydantic and its dependencies, Python 3.12, manylinux x86_64),
# installed into a throwaway folder only when pydantic does not import.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
DIR="$ROOT/benchmarks/.gpu_check"
if [[ -n "${PYTHON:-}" ]]; then PY="$PYTHON"
elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python
else PY=python3
fi
WHEELS=(pydantic pydantic-core annotated-types typing-inspection typing-extensions)

if [[ "${1:-}" == "--prepare" ]]; then
    mkdir -p "$DIR/wheels"
    PYTHONPATH="$ROOT" "$PY" -m raysem.bench.gpu_check --prepare --folder "$DIR"
    # the versions installed here, as cp312 / pure-Python wheels
    pins=$("$PY" -c 'import importlib.metadata as m, sys; print(" ".join(f"{d}=={m.version(d)}" for d in sys.argv[1:]))' "${WHEELS[@]}")
    # shellcheck disable=SC2086
    "$PY" -m pip download --quiet --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
        --no-deps -d "$DIR/wheels" $pins
    du -sh "$DIR"
    exit 0
fi

if ! "$PY" -c "import pydantic" 2>/dev/null; then
    compgen -G "$DIR/wheels/*.whl" >/dev/null || { echo "pydantic is missing and $DIR/wheels holds no wheels: run --prepare first" >&2; exit 1; }
    SITE="$(mktemp -d)"
    trap 'rm -rf "$SITE"' EXIT
    "$PY" -m pip install --quiet --no-index --no-deps --find-links "$DIR/wheels" --target "$SITE" "$DIR"/wheels/*.whl 2>/dev/null \
        || for wheel in "$DIR"/wheels/*.whl; do "$PY" -m zipfile -e "$wheel" "$SITE"; done  # no pip: a wheel is a zip
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -m raysem.bench.gpu_check --folder "$DIR" "$@"
