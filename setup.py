# setup.py - builds the pp._ppc extension (engine in src/core, binding in
# src/py). Metadata lives in pyproject.toml.
import glob
import os

from setuptools import Extension, setup

# No -Werror here: a newer compiler's new warning must not break a user's
# build; make test and CI add it through PPC_EXTRA_CFLAGS.
CFLAGS = ["-std=c11", "-O2", "-Wall", "-Wextra", "-fvisibility=hidden"]
HEADERS = sorted(glob.glob("src/core/*.h") + glob.glob("src/py/*.h"))  # rebuild when they change
extra = os.environ.get("PPC_EXTRA_CFLAGS", "").split()
ldextra = os.environ.get("PPC_EXTRA_LDFLAGS", "").split()

SHARED = ["src/py/pyutil.c", "src/py/fastpickle.c", "src/py/shmmap.c", "src/py/segwrite.c",
          "src/py/payload.c", "src/py/ship.c"]
WORKER = ["src/py/worker.c", "src/py/wmodule.c", "src/core/buf.c", "src/core/frame.c",
          "src/core/proc.c", "src/core/result.c", "src/core/shm.c", "src/core/vm.c"] + SHARED

setup(
    ext_modules=[
        # client and ppserver: engine, binding, authentication
        Extension(
            "pp._ppc",
            sources=sorted(glob.glob("src/core/*.c"))
            + sorted(f for f in glob.glob("src/py/*.c") if f not in WORKER)
            + SHARED + ["src/py/worker.c"],  # worker.c: forked workers
            include_dirs=["src/core", "src/py"],
            depends=HEADERS,
            libraries=["ssl", "crypto"],
            extra_compile_args=CFLAGS + extra,
            extra_link_args=ldextra,
        ),
        # worker processes: only the worker loop, so they start fast
        Extension(
            "pp._ppcw",
            sources=WORKER,
            depends=HEADERS,
            include_dirs=["src/core", "src/py"],
            extra_compile_args=CFLAGS + extra,
            extra_link_args=ldextra,
        ),
    ],
)
