"""Shared test set-up: few threads (CI has 2 cores), float64 by default where asked, data paths."""
import os

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(REPO, "..", "shared", "data")
# the shipped example data: package data (mlip/examples), so an installed mlip has it too; the
# checkout's top-level data/ is a symlink to this folder
EXAMPLE_DATA = os.path.join(REPO, "mlip", "examples", "data")


def shared_path(*parts: str) -> str:
    """Path into ../shared/data; the test is skipped when the shared data is absent."""
    path = os.path.join(SHARED_DATA, *parts)
    if not os.path.exists(path):
        pytest.skip(f"shared benchmark data not found: {path}")
    return path


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="module")
def triton_interpreter():
    """TRITON_INTERPRET=1 for one test module only (kernels then run on CPU tensors); the fused
    path decides per kernel build, so other modules in the same process are unaffected."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRITON_INTERPRET", "1")
        yield


@pytest.fixture
def float64_default():
    """torch's default dtype float64 for one test, restored afterwards."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
