"""The GPU check's CPU side (issue: the GPU run must work the first time a GPU is lent): the
benchmark driver and scripts/gpu_check.sh run end to end here in rehearsal mode, and refuse to
produce figures without CUDA otherwise. Timings printed here mean nothing."""
import json
import os
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_DIR = os.path.join(REPO, "..", "shared", "bench")
needs_bench = pytest.mark.skipif(not os.path.exists(os.path.join(BENCH_DIR, "workloads.py")),
                                 reason="../shared/bench not present")


@needs_bench
def test_gpu_bench_rehearsal_writes_figures_and_errors(tmp_path):
    out = tmp_path / "bench.json"
    res = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "gpu_bench.py"), "--device", "cpu",
                          "--dry-run", "--sizes", "tiny", "--workloads", "cu256-infer,3bpa-train",
                          "--programs", "mlip-torch,nequip", "--repeats", "1", "--out", str(out),
                          "--python", "nequip=/nonexistent/python"],
                         capture_output=True, text=True, timeout=600, cwd=REPO)
    assert res.returncode == 0, res.stderr[-2000:]
    results = json.load(open(out))["results"]
    ours = {r["workload"]: r for r in results if r["program"] == "mlip-torch"}
    assert set(ours) == {"cu256-infer", "3bpa-train"}
    for r in ours.values():
        assert r["seconds"] > 0 and r["atoms"] > 0 and r["params"] > 0
    # a family whose process cannot start is reported per case, and the run still completes
    peer = [r for r in results if r["program"] == "nequip"]
    assert len(peer) == 2 and all("error" in r for r in peer)
    assert "mlip-torch" in res.stdout and "ms per call" in res.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_check_refuses_to_run_without_cuda(tmp_path):
    res = subprocess.run(["bash", os.path.join(REPO, "scripts", "gpu_check.sh"), "--only", "bench"],
                         capture_output=True, text=True, timeout=300, cwd=REPO,
                         env=dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable))
    assert res.returncode == 2
    assert "no CUDA device" in res.stdout + res.stderr
    assert not (tmp_path / "gpu_bench.json").exists()


@needs_bench
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_gpu_check_dry_run_end_to_end(tmp_path):
    """Kernel tier through the interpreter, example training killed and resumed, benchmark."""
    res = subprocess.run(["bash", os.path.join(REPO, "scripts", "gpu_check.sh"), "--dry-run"],
                         capture_output=True, text=True, timeout=1100, cwd=REPO, env=dict(os.environ, OUT=str(tmp_path)))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    summary = json.load(open(tmp_path / "gpu_check.json"))
    assert summary["tests"]["tests"] > 30 and summary["tests"]["failures"] == 0 and summary["tests"]["errors"] == 0
    assert summary["train"]["killed_and_resumed"] and summary["train"]["identical"]
    assert summary["bench"]["figures"] >= 4
