"""``--executor ray``: the same pipeline as a Ray Data job on a real local ``ray.init(num_cpus=2)``;
outputs equal the local executor's."""
from __future__ import annotations

import pytest

ray = pytest.importorskip("ray", reason="Ray not installed (optional extra: pip install 'mtlguard[ray]')")

from test_engine_standin import copy_utk, exported_onnx  # noqa: E402

from mtlguard.engine import protect_directory  # noqa: E402


def test_ray_executor_matches_local(utkface_root, tmp_path):
    src = tmp_path / "in"
    copy_utk(utkface_root, src, 5)
    copy_utk(utkface_root, src / "sub", 2, offset=2)
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    local = protect_directory(src, tmp_path / "local", model=exported_onnx(), dataset="utkface", progress=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        rep = protect_directory(src, tmp_path / "ray", model=exported_onnx(), dataset="utkface", executor="ray",
                                workers=2, batch_size=3, progress=False)
    finally:
        ray.shutdown()
    assert rep["executor"] == "ray" and rep["done"] == local["done"] == 7
    assert rep["failures"] == [{"file": "broken.jpg", "reason": local["failures"][0]["reason"]}]
    assert rep["max_abs_delta_written_uint8"] == local["max_abs_delta_written_uint8"] > 0
    outs = sorted(p.relative_to(tmp_path / "local") for p in (tmp_path / "local").rglob("*.png"))
    assert len(outs) == 7
    for rel in outs:
        assert (tmp_path / "ray" / rel).read_bytes() == (tmp_path / "local" / rel).read_bytes(), rel
