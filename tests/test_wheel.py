"""Installable use (slow, about 2-3 minutes): build the wheel, install it into a clean virtual
environment outside the checkout, and from a folder outside the checkout run ``mlip demo``,
``mlip train`` on a user's file, ``mlip export``, MD (``python -m mlip.deploy.md``) and ``mlip
benchmark --data-root DIR``.

The venv is made by the base interpreter (not this .venv, which sees the checkout through its
editable install) without system site-packages. Dependencies, by ``MLIP_WHEEL_TEST_DEPS``:

- ``install`` (default): pip installs the wheel with its dependencies from the configured
  indexes, as a user's ``pip install`` does; torch is pinned to the version running this test
  (or ``MLIP_TORCH``, as scripts/setup.sh), so pip takes the same build (the CPU wheel here)
  and never resolves the unpinned requirement to multi-GB CUDA packages.
- ``borrow``: for machines without an index. The wheel is installed with ``--no-deps`` and the
  dependencies are those of this interpreter's site-packages, reached through a ``.pth`` line
  (a plain path line: the editable install's own ``.pth`` hook there is not run, so the
  checkout stays invisible). ``pip check`` then proves the wheel's own requirements are met.

Either way the tests assert that ``mlip`` is imported from the venv, not from the checkout.
"""
import glob
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from types import SimpleNamespace
from typing import Dict, Optional, Sequence

import pytest

from conftest import SHARED_DATA
from test_train_helpers import tiny_config, write_config, write_frames

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIP_TIMEOUT_S = 900


def _run(cmd: Sequence[object], cwd: object, env: Dict[str, str], timeout: float = 600,
         check: bool = True) -> subprocess.CompletedProcess:
    """Run ``cmd``; unless ``check`` is False a non-zero exit fails the test with its output."""
    res = subprocess.run([str(c) for c in cmd], cwd=str(cwd), env=env, capture_output=True, text=True,
                         timeout=timeout)
    if check and res.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} exited {res.returncode}\n--- stdout\n{res.stdout[-4000:]}\n"
                    f"--- stderr\n{res.stderr[-4000:]}")
    return res


def _copy_source(dest: str) -> None:
    """What `pip install .` builds from: pyproject.toml, README.md and the package, without build
    artefacts. Built in a copy so that the build's build/ and *.egg-info never land in the
    checkout, where other runs and people work."""
    os.makedirs(dest)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(os.path.join(REPO, name), dest)
    shutil.copytree(os.path.join(REPO, "mlip"), os.path.join(dest, "mlip"),
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so", "build", "*.egg-info"))


def _build_wheel(src: str, out: str) -> str:
    """Build with this interpreter's setuptools when it is recent enough (no index needed),
    otherwise in pip's isolated build environment (fetches setuptools)."""
    try:
        import setuptools
        recent = tuple(int(p) for p in setuptools.__version__.split(".")[:2]) >= (70, 1)  # own bdist_wheel
    except ImportError:
        recent = False
    cmd = [sys.executable, "-m", "pip", "wheel", src, "--no-deps", "-w", out, "-q"]
    if recent:
        cmd.append("--no-build-isolation")
    _run(cmd, src, _clean_env(), timeout=PIP_TIMEOUT_S)
    wheels = glob.glob(os.path.join(out, "mlip-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def _clean_env(venv: Optional[str] = None, extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The environment of a user's shell: nothing points at the checkout or at this .venv."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP") and not k.startswith("PYTEST")}
    path = [p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(os.path.join(REPO, ""))]
    if venv:
        path.insert(0, os.path.join(venv, "bin"))
        env["VIRTUAL_ENV"] = venv
    env["PATH"] = os.pathsep.join(path)
    env["OMP_NUM_THREADS"] = "1"  # CI machines have 2 shared cores
    env.update(extra or {})
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """venv (folder), env (environment), work (a folder outside the checkout), wheel (path), src
    (the source copy it was built from), borrowed (sys.path entries lent by this interpreter in
    borrow mode). The venv (about 1.3 GB with torch) is deleted after the module's tests."""
    mode = os.environ.get("MLIP_WHEEL_TEST_DEPS", "install")
    if mode not in ("install", "borrow"):
        pytest.fail(f"MLIP_WHEEL_TEST_DEPS must be install or borrow, got {mode!r}")
    base = tmp_path_factory.mktemp("wheel")
    assert not str(base).startswith(os.path.join(REPO, "")), "the temporary folder is inside the checkout"
    _copy_source(str(base / "src"))
    wheel = _build_wheel(str(base / "src"), str(base / "dist"))
    venv = str(base / "venv")
    base_python = getattr(sys, "_base_executable", None) or sys.executable
    _run([base_python, "-m", "venv", venv], base, _clean_env())
    python = os.path.join(venv, "bin", "python")
    env = _clean_env(venv, {"TORCH_EXTENSIONS_DIR": str(base / "torch_extensions"),  # kernel from the wheel
                            "MPLBACKEND": "Agg"})
    pip = [python, "-m", "pip", "--disable-pip-version-check"]
    if mode == "install":
        import torch
        torch_req = os.environ.get("MLIP_TORCH", f"torch=={torch.__version__.split('+')[0]}")
        _run(pip + ["install", "-q", torch_req, wheel], base, env, timeout=PIP_TIMEOUT_S)
    else:
        site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], base, env)
        with open(os.path.join(site.stdout.strip(), "_mlip_test_deps.pth"), "w") as fh:
            fh.write(sysconfig.get_paths()["purelib"] + "\n")
        _run(pip + ["install", "-q", "--no-deps", "--no-index", "--ignore-installed", wheel], base, env,
             timeout=PIP_TIMEOUT_S)
    check = _run(pip + ["check"], base, env, check=False)
    # borrowed: the venv's own pip/setuptools sit beside the borrowed packages, which may want
    # newer ones; only mlip's requirements are this test's business there
    if mode == "install":
        assert check.returncode == 0, check.stdout + check.stderr
    else:
        assert not [line for line in check.stdout.splitlines() if line.startswith("mlip ")], check.stdout
    work = base / "work"
    work.mkdir()
    borrowed = [sysconfig.get_paths()["purelib"]] if mode == "borrow" else []
    yield SimpleNamespace(venv=venv, env=env, work=work, wheel=wheel, src=str(base / "src"), borrowed=borrowed)
    shutil.rmtree(venv, ignore_errors=True)


def test_wheel_contents(installed):
    wheel, src = installed.wheel, installed.src
    names = set(zipfile.ZipFile(wheel).namelist())
    on_disk = set()  # of the copy it was built from (the checkout may change meanwhile)
    for folder, dirs, files in os.walk(os.path.join(src, "mlip")):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if name.endswith((".py", ".cpp", ".yaml", ".extxyz", ".md")) or name.startswith("LICENSE"):
                on_disk.add(os.path.relpath(os.path.join(folder, name), src).replace(os.sep, "/"))
    assert on_disk - names == set(), "files of the package missing from the wheel"
    for rel in ("mlip/examples/data/si_train.extxyz", "mlip/examples/data/si_test.extxyz",
                "mlip/examples/data/LICENSE-mlearn-si", "mlip/examples/configs/example.yaml",
                "mlip/examples/configs/rmd17_ethanol.yaml", "mlip/ops/csrc/message_cpu.cpp"):
        assert rel in names, rel
    entry_points = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert entry_points and "mlip = mlip.cli:main" in zipfile.ZipFile(wheel).read(entry_points[0]).decode()


def test_installed_mlip_comes_from_the_venv_and_runs_demo(installed):
    venv, env, work = installed.venv, installed.env, installed.work
    res = _run(["python", "-c", "import json, sys, mlip, mlip.examples; print(json.dumps([mlip.__file__, "
                "mlip.examples.example_path('data', 'si_test.extxyz'), sys.path]))"], work, env)
    mlip_file, example, path = json.loads(res.stdout)
    assert mlip_file.startswith(os.path.join(venv, "")), mlip_file
    assert example.startswith(os.path.join(venv, "")) and os.path.isfile(example), example
    resolved = [os.path.abspath(os.path.join(str(work), p)) for p in path]  # '' is the folder it ran in
    in_checkout = [p for p in resolved if p == REPO or p.startswith(os.path.join(REPO, ""))]
    assert in_checkout == installed.borrowed, path  # nothing of the checkout (but borrowed dependencies)
    assert _run(["mlip", "--version"], work, env).stdout.strip() == "mlip 0.1.0"
    out = _run(["mlip", "demo", "--limit", "2"], work, env).stdout
    assert "si_test.extxyz:0" in out and "si_test.extxyz:1" in out, out
    out = _run(["mlip", "demo", "--copy-examples", "examples"], work, env).stdout
    assert "mlip train configs/example.yaml" in out
    assert (work / "examples" / "configs" / "example.yaml").is_file()
    assert (work / "examples" / "data" / "LICENSE-mlearn-si").is_file()


def test_installed_train_on_a_users_file_export_and_md(installed):
    venv, env, work = installed.venv, installed.env, installed.work
    user = work / "user"
    user.mkdir()
    write_frames(str(user / "my_structures.extxyz"), 12, seed=11)
    write_frames(str(user / "my_test.extxyz"), 3, seed=12)
    cfg = tiny_config(user, "my_structures.extxyz", optim={"lr": 0.01, "max_epochs": 2})
    cfg["output_dir"] = "runs/mine"  # relative to the folder the user starts mlip in
    cfg["data"]["test_files"] = ["my_test.extxyz"]
    write_config(str(user / "mine.yaml"), cfg)
    out = _run(["mlip", "train", "mine.yaml"], user, env, timeout=900).stdout
    run = user / "runs" / "mine"
    assert (run / "best_model.pt").is_file(), out
    assert (run / "test" / "my_test_metrics.json").is_file(), out
    _run(["mlip", "export", "runs/mine/best_model.pt", "-o", "mine.nequip.pth"], user, env)
    # MD on the default structure, the Si example shipped in the package
    out = _run(["python", "-m", "mlip.deploy.md", "mine.nequip.pth", "--steps", "10", "--interval", "5",
                "-o", "md.traj"], user, env).stdout
    assert (user / "md.traj").is_file() and len(out.strip().splitlines()) == 4, out  # header, steps 0, 5, 10


def test_installed_benchmark_with_a_data_root(installed):
    venv, env, work = installed.venv, installed.env, installed.work
    # an installed mlip has no checkout to guess the data from: one line asking for --data-root
    res = _run(["mlip", "benchmark", "rmd17-ethanol"], work, env, check=False)
    assert res.returncode == 2 and "give --data-root" in res.stderr, res.stderr
    data_root = os.path.abspath(SHARED_DATA)
    if not os.path.isdir(os.path.join(data_root, "rmd17")):
        pytest.skip(f"shared benchmark data not found: {data_root}/rmd17")
    out = _run(["mlip", "benchmark", "rmd17-ethanol", "--budget", "0.05", "--data-root", data_root,
                "--output-dir", "bench", "--set", "data.train_index=0:40", "model.num_layers=1", "model.channels=4",
                "model.l_max=1", "optim.max_epochs=50", "data.batch_size=10", "logging.progress_bar=false",
                "dtype=float32"], work, env, timeout=900).stdout
    assert "budget run (0.05 min)" in out and "rmd17_ethanol_test_01" in out, out
    assert (work / "bench" / "benchmark.json").is_file()
