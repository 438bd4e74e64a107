#!/usr/bin/env bash
# invhvp inside pyDVL (and the pyDVL/captum recipes of docs/interop.md), tested against the real
# releases in their own virtual environment: pyDVL 0.10 pins numpy<2, which the main environment
# does not allow.
#
#   bash tests/pydvl_env/run.sh            # from anywhere; creates .venv-pydvl at the repository root
#   PYDVL_VENV=/path bash tests/pydvl_env/run.sh
#
# Reuses the environment when it already holds pyDVL 0.10.0 and captum 0.9.0 (delete it to
# rebuild); extra arguments go to pytest.  pip's output goes to $VENV/install.log, shown on failure.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="${PYDVL_VENV:-.venv-pydvl}"
PY="$VENV/bin/python"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

start=$(date +%s)
if ! "$PY" - 2>/dev/null <<'PYCHECK'
import importlib.metadata as md, sys
sys.exit(not (md.version("pydvl") == "0.10.0" and md.version("captum") == "0.9.0"))
PYCHECK
then
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    # torch pinned: an unpinned torch resolves to a multi-GB CUDA build.
    # pydvl[influence]: its torch influence module imports dask/distributed/zarr.
    # captum 0.9.0: 0.5 MB, for the captum recipe of docs/interop.md.
    if ! "$PY" -m pip install -q torch==2.13.0 "pydvl[influence]==0.10.0" captum==0.9.0 pytest hypothesis -e . \
        >"$VENV/install.log" 2>&1; then
        grep -v "^WARNING: Location" "$VENV/install.log" | tail -40
        echo "tests/pydvl_env/run.sh: installing the pyDVL environment failed (log: $VENV/install.log)" >&2
        exit 1
    fi
else
    "$PY" -m pip install -q --no-deps -e . >"$VENV/install.log" 2>&1  # this working tree's invhvp
fi
echo "tests/pydvl_env/run.sh: environment ready in $(( $(date +%s) - start )) s ($VENV)"
"$PY" -m pytest tests/pydvl_env tests/test_interop_docs.py invhvp/interop/pydvl.py -q -p no:cacheprovider "$@"
