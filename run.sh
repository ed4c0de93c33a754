#!/usr/bin/env bash
# One entry point for newcomers and CI:
#   bash run.sh demo        set up .venv (once) and run the built-in synthetic UDA demo
#   bash run.sh test [ARGS] set up .venv with test extras (once) and run the whole test suite, one worker per core
#   bash run.sh mfmseg ...  any mfmseg command inside the environment
# The environment is rebuilt only when pyproject.toml changes (a stamp file records its hash).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
VENV=.venv
TORCH_SPEC=${MFMSEG_TORCH:-torch==2.13.0}

setup() {
    local extras=$1
    local want
    want="$(sha256sum pyproject.toml | cut -d' ' -f1)-$extras-$TORCH_SPEC"
    if [[ -f $VENV/.setup-stamp && "$(cat $VENV/.setup-stamp)" == *"$want"* ]]; then
        return 0
    fi
    [[ -x $VENV/bin/python ]] || "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
    # torch first: a bare `torch` requirement would pull a multi-GB CUDA wheel on a CPU machine.
    "$VENV/bin/python" -m pip install -q "$TORCH_SPEC"
    "$VENV/bin/python" -m pip install -q -e ".[$extras]"
    echo "$want" >> "$VENV/.setup-stamp"
}

cmd=${1:-demo}
shift || true
case "$cmd" in
    demo) setup test; exec "$VENV/bin/mfmseg" demo "$@" ;;
    # one pytest-xdist worker per core (tests/conftest.py gives each its share of threads); `-n 0` runs in one process
    test) setup test; exec "$VENV/bin/python" -m pytest -n auto --dist worksteal "$@" ;;
    mfmseg) setup test; exec "$VENV/bin/mfmseg" "$@" ;;
    *) echo "usage: bash run.sh {demo|test|mfmseg} [ARGS...]" >&2; exit 2 ;;
esac
