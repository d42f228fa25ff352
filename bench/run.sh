#!/usr/bin/env bash
# bench/run.sh - entry point of `make bench`: builds the benchmark's own
# environments (bench/.venv-ppft with ppft+numpy+matplotlib; the project's
# .venv via `make venv`, plus numpy+matplotlib), then runs bench/driver.py.
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

# -- 1. ppft's venv: ppft installs a top-level `pp` too, so it lives alone.
if ! "$PPFT_VENV/bin/python" -c "import ppft, pp, numpy, matplotlib" >/dev/null 2>&1; then
    log "creating $PPFT_VENV (ppft, numpy, matplotlib)"
    rm -rf "$PPFT_VENV"
    if ! "$PY" -m venv "$PPFT_VENV" ||
       ! "$PPFT_VENV/bin/python" -m pip install "${PIP_FLAGS[@]}" ppft numpy matplotlib; then
        log "WARNING: could not build $PPFT_VENV; ppft cells will be n/a"
    fi
fi

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
exit $rc
