"""Allocator tuning: applied on Linux/glibc, idempotent, and switched off by the environment."""
import sys

import pytest

from mlip import perf


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setattr(perf, "_done", False)
    monkeypatch.setenv("MLIP_MALLOC_TUNING", "0")
    assert perf.tune_malloc() is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_applied_and_idempotent(monkeypatch):
    monkeypatch.delenv("MLIP_MALLOC_TUNING", raising=False)
    monkeypatch.setattr(perf, "_done", False)
    first = perf.tune_malloc()
    assert perf.tune_malloc() is first
    import torch  # allocations still work afterwards
    assert float(torch.ones(1 << 22).sum()) == float(1 << 22)
