"""mtlguard.atomic: the one atomic-write helper every module uses."""
import os

import pytest

from mtlguard.atomic import atomic_write, atomic_write_bytes, atomic_write_text, default_file_mode


def test_writes_complete_file_with_usual_mode(tmp_path):
    p = atomic_write_text(tmp_path / "sub" / "a.json", "{}")
    assert p.read_text() == "{}"
    assert (os.stat(p).st_mode & 0o777) == default_file_mode()
    assert os.listdir(p.parent) == ["a.json"]  # no temp file left


def test_failure_leaves_destination_untouched_and_no_temp(tmp_path):
    p = tmp_path / "a.bin"
    atomic_write_bytes(p, b"old")

    def broken(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(p, broken)
    assert p.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["a.bin"]


def test_no_overwrite_refuses_existing(tmp_path):
    p = atomic_write_bytes(tmp_path / "x", b"1")
    with pytest.raises(FileExistsError, match="already exists"):
        atomic_write_bytes(p, b"2", overwrite=False)
    assert p.read_bytes() == b"1"
    assert atomic_write_bytes(tmp_path / "y", b"3", overwrite=False).read_bytes() == b"3"
    assert sorted(os.listdir(tmp_path)) == ["x", "y"]


def test_prefix_and_suffix_name_the_temp_file(tmp_path):
    seen = []
    atomic_write(tmp_path / "m.pt2", lambda tmp: (seen.append(os.path.basename(tmp)), open(tmp, "w").close()),
                 prefix=".tmp-", suffix="-m.pt2")
    assert seen[0].startswith(".tmp-") and seen[0].endswith("-m.pt2")
