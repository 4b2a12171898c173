"""Allocator tuning: applied on Linux/glibc, idempotent, and switched off by the environment."""
import platform
import sys

import pytest

from mlip import perf


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setattr(perf, "_done", False)
    monkeypatch.setenv("MLIP_MALLOC_TUNING", "0")
    assert perf.tune_malloc() is False


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="glibc only")
def test_applied_and_idempotent(monkeypatch):
    monkeypatch.delenv("MLIP_MALLOC_TUNING", raising=False)
    monkeypatch.setattr(perf, "_done", False)
    assert perf.tune_malloc() is True  # every mallopt call accepted
    assert perf.tune_malloc() is True
    import torch  # allocations still work afterwards
    assert float(torch.ones(1 << 22).sum()) == float(1 << 22)
