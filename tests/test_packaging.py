"""Packaging, as a user meets it: `pip install .` and a wheel built from the
sdist, each into a fresh venv, give a pp that runs a job from outside the
source tree, with the one version string and the metadata pyproject.toml
declares; the sdist carries every header the sources include.

Slow (the extension is built twice, setuptools comes from the package
index): `make test` runs this file once, not on every interpreter.
"""
import glob
import os
import shutil
import subprocess
import sys
import tarfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.timeout(900)

# Run in the installed environment from an empty directory: it must use the
# installed pp, run a real job, and agree with its own metadata.
CHECK = '''
import importlib.metadata as md
import sys

import pp


def square(x):
    return x * x


assert pp.__file__.startswith(sys.prefix), pp.__file__
meta = md.metadata("ppc")
assert meta["Version"] == pp.__version__ == pp.version, (meta["Version"], pp.__version__)
assert meta["Requires-Python"] == ">=3.9", meta["Requires-Python"]
classifiers = meta.get_all("Classifier")
assert "Operating System :: POSIX :: Linux" in classifiers, classifiers
assert not [c for c in classifiers if "Windows" in c or "MacOS" in c], classifiers
with pp.Server(2) as s:
    assert [j() for j in [s.submit(square, (i,)) for i in range(20)]] == [i * i for i in range(20)]
print("ok", pp.__version__)
'''


def run(cmd, cwd, timeout=600):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    proc = subprocess.run([str(c) for c in cmd], cwd=str(cwd), env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, "%s failed (rc=%s)\n--- stdout\n%s\n--- stderr\n%s" % (
        cmd, proc.returncode, proc.stdout[-4000:], proc.stderr[-4000:])
    return proc.stdout


def fresh_venv(path):
    run([sys.executable, "-m", "venv", path], cwd=path.parent)
    return path / "bin" / "python"


def copy_of_tree(dst):
    """The source tree as a clean clone has it: no builds, no venvs."""
    shutil.copytree(ROOT, str(dst), ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.so", "*.o",
        ".pytest_cache"))
    return dst


def check_installed(py, tmp_path):
    work = tmp_path / "elsewhere"
    work.mkdir()
    (work / "check.py").write_text(CHECK)
    assert run([py, "check.py"], cwd=work).startswith("ok ")
    # the console script is installed and answers
    usage = run([py.parent / "ppserver", "-h"], cwd=work)
    assert "Parallel Python Network Server" in usage


def test_pip_install_dot(tmp_path):
    src = copy_of_tree(tmp_path / "src")
    py = fresh_venv(tmp_path / "venv")
    run([py, "-m", "pip", "install", "-q", "."], cwd=src)
    check_installed(py, tmp_path)


def test_wheel_built_from_the_sdist(tmp_path):
    src = copy_of_tree(tmp_path / "src")
    # the sdist, made by the build backend as any PEP 517 front end would
    name = run([sys.executable, "-c",
                "from setuptools import build_meta as b; print(b.build_sdist('dist'))"],
               cwd=src).split()[-1]
    sdist = src / "dist" / name
    with tarfile.open(str(sdist)) as t:
        members = {m.split("/", 1)[1] for m in t.getnames() if "/" in m}
    headers = sorted(os.path.relpath(h, ROOT)
                     for h in glob.glob(os.path.join(ROOT, "src", "*", "*.h")))
    assert headers and not [h for h in headers if h not in members], "headers missing from sdist"
    # a wheel from that sdist alone, in a fresh venv, installed there
    py = fresh_venv(tmp_path / "venv")
    wheels = tmp_path / "wheels"
    run([py, "-m", "pip", "wheel", "-q", "--no-deps", "-w", wheels, sdist], cwd=tmp_path)
    built = list(wheels.glob("ppc-*.whl"))
    assert len(built) == 1, built
    run([py, "-m", "pip", "install", "-q", built[0]], cwd=tmp_path)
    check_installed(py, tmp_path)
