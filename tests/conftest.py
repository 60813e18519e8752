"""Shared pytest fixtures: the real UTKFace data, deterministic seeding, and visible GPU skips."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def utkface_dir() -> Path | None:
    """The real UTKFace images folder: $MTLGUARD_UTKFACE, else ../shared/data/utkface beside the repo."""
    env = os.environ.get("MTLGUARD_UTKFACE")
    root = Path(env) if env else REPO.parent / "shared" / "data" / "utkface"
    return root if (root / "images").is_dir() else None


@pytest.fixture(scope="session")
def load_example():
    """``load_example(name)``: the module ``examples/<name>.py`` imported from its file (examples/ is no package)."""
    import importlib.util

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, REPO / "examples" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    return load


@pytest.fixture(scope="session")
def utkface_root() -> Path:
    root = utkface_dir()
    if root is None:
        pytest.skip("real UTKFace data not found (set MTLGUARD_UTKFACE or place it at ../shared/data/utkface)")
    return root


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): on a
    shared, oversubscribed 2-core CPU this is several times faster."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA GPU not available on this machine")
