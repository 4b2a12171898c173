"""The GPU-facing tools that can be checked without a GPU.

* Offline compilation: every generated kernel goes through Triton's real NVIDIA backend (PTX,
  then the ptxas bundled with Triton) for sm_90, which is stricter than the interpreter, and
  must not spill registers at the sizes the model uses.
* The benchmark script runs end to end (fused path through the interpreter; timings meaningless).
"""
import importlib.util
import os

import pytest
import torch

pytest.importorskip("triton")

from mlip.irreps import hidden_irreps, sh_irreps  # noqa: E402
from mlip.ops import triton_compile_check as cc  # noqa: E402
from mlip.ops.tensor_product import TensorProductSpec, reachable_irreps  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def layer_spec(l_max, parity=True):
    hidden, sh = hidden_irreps(l_max, parity), sh_irreps(l_max, parity)
    return TensorProductSpec(hidden, sh, reachable_irreps(hidden, sh, hidden))


needs_backend = pytest.mark.skipif(not cc.available(), reason="Triton's NVIDIA backend tools are not installed")


@needs_backend
def test_small_model_kernels_compile_for_sm90_without_spills(monkeypatch):
    monkeypatch.setenv("TRITON_DEFAULT_FP_FUSION", "1")
    rows = cc.compile_report(layer_spec(1), torch.float32, channels=64, arch=90)
    assert {r["slot"] for r in rows} == {"x", "y", "w", "z"}
    assert {r["mode"] for r in rows} == {"deterministic", "atomic", "edge"}
    for r in rows:
        assert r["stack_bytes"] == 0, r
        assert 0 < r["registers"] <= 255, r


@needs_backend
@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_medium_model_kernels_compile_for_sm90(dtype, monkeypatch):
    """M size (128 channels, l_max 2, O(3)): no spills in float32; float64 may spill a little."""
    monkeypatch.setenv("TRITON_DEFAULT_FP_FUSION", "1")
    rows = cc.compile_report(layer_spec(2), dtype, channels=128, arch=90)
    limit = 0 if dtype == torch.float32 else 256
    for r in rows:
        assert r["stack_bytes"] <= limit, r


def test_benchmark_script_runs_with_the_interpreter(monkeypatch, capsys):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    path = os.path.join(REPO, "scripts", "bench_kernels.py")
    spec = importlib.util.spec_from_file_location("bench_kernels", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.run(["--sizes", "S", "--edges", "40", "--channels", "2", "--warmup", "0", "--repeat", "1",
                      "--scatter", "both", "--interpret"])
    out = capsys.readouterr().out
    assert "TRITON INTERPRETER" in out
    labels = {(r["mode"], r["backend"]) for r in rows}
    for mode in ("fwd", "bwd", "dbwd"):
        for backend in ("reference", "e3nn", "fused-det", "fused-atomic"):
            assert (mode, backend) in labels
    assert all(r["edges_per_s"] > 0 for r in rows)
