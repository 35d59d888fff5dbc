"""addiagnosis.files: the one atomic write, its file modes, and the scan stem."""

from __future__ import annotations

import os

import pytest

from addiagnosis.errors import OutputError
from addiagnosis.files import atomic_file, scan_stem, write_text_atomic


def test_new_file_gets_the_umask_mode_and_a_replaced_file_keeps_its_own(tmp_path):
    old = os.umask(0o027)
    try:
        import importlib

        import addiagnosis.files as files

        importlib.reload(files)  # the umask is read at import
        files.write_text_atomic(tmp_path / "new.json", "{}")
        assert os.stat(tmp_path / "new.json").st_mode & 0o777 == 0o640  # not mkstemp's 0600
        os.chmod(tmp_path / "new.json", 0o604)
        files.write_text_atomic(tmp_path / "new.json", "[]")
        assert os.stat(tmp_path / "new.json").st_mode & 0o777 == 0o604
        assert (tmp_path / "new.json").read_text() == "[]"
    finally:
        os.umask(old)
        importlib.reload(files)


def test_failure_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "t.txt"
    write_text_atomic(target, "old")
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["t.txt"]
    with pytest.raises(OutputError, match="cannot write"):
        write_text_atomic(tmp_path / "t.txt" / "below-a-file.txt", "x")


def test_scan_stem():
    assert scan_stem("a/sub-01_T1w.nii.gz") == "sub-01_T1w" and scan_stem("x.nii") == "x"
    assert scan_stem("series.dcm") == "series"
