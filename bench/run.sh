#!/usr/bin/env bash
# bench/run.sh - entry point of `make bench`: builds the benchmark's own
# environments (bench/.venv-ppft with ppft+numpy+matplotlib; bench/.venv-ray
# with ray+numpy; the project's .venv via `make venv`, plus numpy+matplotlib),
# then runs bench/driver.py. A peer's venv that cannot be built leaves its
# cells "n/a" with the reason (bench/results/venv-*.log keeps pip's output).
# Options are passed to the driver: --quick (smoke run), --only CASE, ...
# Nothing here is needed by `make test`.
set -u -o pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
PY=${PYTHON:-python3}
PPFT_VENV="$HERE/.venv-ppft"
PPC_PY="$ROOT/.venv/bin/python"
PIP_FLAGS=(-q --disable-pip-version-check)

log() { printf 'bench: %s\n' "$*" >&2; }

mkdir -p "$HERE/results"

# peer_venv DIR CHECK PACKAGES...: (re)build DIR with PACKAGES unless
# `python -c CHECK` already works there; on failure the driver reports the
# cells n/a and reads the reason from bench/results/venv-NAME.log.
peer_venv() {
    local dir=$1 check=$2; shift 2
    local name; name=$(basename "$dir"); name=${name#.venv-}
    local plog="$HERE/results/venv-$name.log"
    if "$dir/bin/python" -c "$check" >/dev/null 2>&1; then
        rm -f "$plog"
        return 0
    fi
    log "creating $dir ($*)"
    rm -rf "$dir"
    if "$PY" -m venv "$dir" >"$plog" 2>&1 &&
       "$dir/bin/python" -m pip install "${PIP_FLAGS[@]}" "$@" >>"$plog" 2>&1 &&
       "$dir/bin/python" -c "$check" >>"$plog" 2>&1; then
        rm -f "$plog"
    else
        log "WARNING: could not build $dir ($name cells will be n/a): see $plog"
    fi
}

# -- 1. the peers' venvs: ppft installs a top-level `pp` too, so it lives
# alone; Ray is large and pins its own dependencies, so it lives alone too.
peer_venv "$HERE/.venv-ppft" "import ppft, pp, numpy, matplotlib" ppft numpy matplotlib
peer_venv "$HERE/.venv-ray" "import ray, numpy" ray numpy
# mpi4py built from source against the system's Open MPI (libopenmpi-dev)
peer_venv "$HERE/.venv-mpi4py" "import mpi4py.futures" --no-binary mpi4py mpi4py
peer_venv "$HERE/.venv-dask" "import dask.distributed" "dask[distributed]"

# -- 2. the project's venv (ours), plus numpy and matplotlib for the bench.
if ! make -C "$ROOT" venv >&2; then
    log "WARNING: 'make -C $ROOT venv' failed; ppc cells will be n/a"
fi
if [ -x "$PPC_PY" ]; then
    if ! "$PPC_PY" -c "import numpy, matplotlib" >/dev/null 2>&1; then
        log "installing numpy, matplotlib into $ROOT/.venv"
        "$PPC_PY" -m pip install "${PIP_FLAGS[@]}" numpy matplotlib ||
            log "WARNING: numpy/matplotlib install into .venv failed"
    fi
    if "$PPC_PY" -c "import ppft" >/dev/null 2>&1; then
        log "WARNING: ppft is installed in $ROOT/.venv: its 'pp' may shadow ours"
    fi
fi

# -- 3. the driver: the project venv's python, else ppft's venv, else python3.
DRIVER_PY=$PY
for c in "$PPC_PY" "$PPFT_VENV/bin/python"; do
    if [ -x "$c" ]; then DRIVER_PY=$c; break; fi
done

PGID_FILE="$HERE/results/.current_pgid"
DRIVER_PID=
cleanup() {
    # the driver kills its measurements itself; this is the backstop for a
    # driver that died: kill the measurement's process group (servers too).
    if [ -n "$DRIVER_PID" ] && kill -0 "$DRIVER_PID" 2>/dev/null; then
        kill -TERM "$DRIVER_PID" 2>/dev/null
        sleep 1
        kill -KILL "$DRIVER_PID" 2>/dev/null
    fi
    if [ -f "$PGID_FILE" ]; then
        pg=$(cat "$PGID_FILE" 2>/dev/null)
        [ -n "$pg" ] && kill -KILL -- "-$pg" 2>/dev/null
        rm -f "$PGID_FILE"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$DRIVER_PY" "$HERE/driver.py" "$@" &
DRIVER_PID=$!
wait "$DRIVER_PID"
rc=$?
DRIVER_PID=
# the map case runs its variants itself (bench/cases/mapbench.py)
if [ $rc -eq 0 ] && [ -x "$PPC_PY" ]; then
    "$PPC_PY" "$HERE/cases/mapbench.py" $(printf '%s\n' "$@" | grep -x -e --quick) || rc=$?
fi
exit $rc
