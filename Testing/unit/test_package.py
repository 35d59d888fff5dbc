"""Model packages on disk: atomic writes, --force only over a package, the user's umask, class counts that
match the weights, and report.json naming the package and its weights' SHA-256."""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import pytest
import torch

from addiagnosis.cli.main import main
from addiagnosis.errors import ModelError
from addiagnosis.files import sha256_file
from addiagnosis.models import card as cards
from addiagnosis.models import discovery, package
from addiagnosis.models.network import ClassificationModel3D
from addiagnosis.models.package import find_package, write_package

from conftest import card_for, make_scan, random_model, save_nifti


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, needle):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("addiagnosis: error: "), err
    assert needle in lines[0], lines[0]
    assert "Traceback" not in err


def snapshot(root: Path) -> dict:
    """Every path under root with its bytes (files) or None (folders): 'the exact files on disk'."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() and not p.is_symlink() else None)
            for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A plain state_dict of the seed architecture (what `import-checkpoint --preset seed` takes)."""
    path = tmp_path_factory.mktemp("ckpt") / "model.pth"
    torch.manual_seed(0)
    torch.save(ClassificationModel3D((160, 256, 256), 5).state_dict(), path)
    return path


@pytest.fixture()
def umask():
    """Set a umask for one test, restored afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda m: os.umask(m)
    os.umask(old)


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.mark.parametrize("mask, dir_mode, file_mode", [(0o022, 0o755, 0o644), (0o002, 0o775, 0o664),
                                                       (0o077, 0o700, 0o600)])
def test_packages_honour_the_umask(tmp_path, umask, mask, dir_mode, file_mode):
    umask(mask)
    pkg = write_package(tmp_path / "m", random_model().state_dict(), card_for("m"))
    assert mode(pkg.path) == dir_mode
    assert mode(pkg.path / "weights.pt") == file_mode and mode(pkg.path / "card.json") == file_mode


def test_import_with_force_refuses_a_folder_that_is_not_a_package(tmp_path, capsys, checkpoint):
    dest = tmp_path / "models"
    victim = dest / "thesis"
    (victim / "chapters").mkdir(parents=True)
    (victim / "chapters" / "1.tex").write_text("years of work")
    (victim / "card.json").write_text('{"name": "thesis"}')  # a card.json that is not a valid card
    before = snapshot(dest)
    code, _, err = run_cli(capsys, "import-checkpoint", checkpoint, "--name", "thesis", "--dest", dest, "--force")
    assert_one_line_error(code, err, "exists and is not a model package (no valid card.json): refusing")
    assert snapshot(dest) == before  # intact, and no temporary folder left beside it

    (dest / "afile").write_text("x")
    code, _, err = run_cli(capsys, "import-checkpoint", checkpoint, "--name", "afile", "--dest", dest, "--force")
    assert_one_line_error(code, err, "is not a model package")
    (dest / "link").symlink_to(victim)
    code, _, err = run_cli(capsys, "import-checkpoint", checkpoint, "--name", "link", "--dest", dest, "--force")
    assert_one_line_error(code, err, "is not a model package")
    assert (dest / "afile").read_text() == "x" and (dest / "link").is_symlink()
    assert snapshot(victim) == {k[len("thesis/"):]: v for k, v in before.items() if k.startswith("thesis/")}


def test_import_with_force_replaces_a_package_atomically(tmp_path, capsys, checkpoint, umask):
    umask(0o022)
    dest = tmp_path / "models"
    old = write_package(dest / "seedy", random_model().state_dict(), card_for("seedy"))
    old_sha = old.card.weights.sha256
    code, _, err = run_cli(capsys, "import-checkpoint", checkpoint, "--name", "seedy", "--dest", dest)
    assert_one_line_error(code, err, "already exists (choose another name, or --force")
    assert read_sha(dest / "seedy") == old_sha
    code, out, err = run_cli(capsys, "import-checkpoint", checkpoint, "--name", "seedy", "--dest", dest, "--force")
    assert code == 0, err
    assert sorted(p.name for p in dest.iterdir()) == ["seedy"]  # no temporary or set-aside folder left
    new = find_package(str(dest / "seedy"))
    assert new.card.version == "seed-import-1" and new.weights_sha256 != old_sha
    assert new.weights_sha256 == sha256_file(dest / "seedy" / "weights.pt")
    assert mode(dest / "seedy") == 0o755
    # an empty folder holds nothing to lose: --force may fill it
    (dest / "empty").mkdir()
    assert main(["import-checkpoint", str(checkpoint), "--name", "empty", "--dest", str(dest), "--force"]) == 0
    assert find_package(str(dest / "empty")).name == "empty"


def read_sha(folder: Path) -> str:
    return json.loads((folder / "card.json").read_text())["weights"]["sha256"]


def test_a_failed_replacement_keeps_the_old_package(tmp_path, monkeypatch):
    dest = tmp_path / "models"
    write_package(dest / "m", random_model().state_dict(), card_for("m"))
    before = snapshot(dest)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(package.torch, "save", disk_full)
    with pytest.raises(ModelError) as err:
        write_package(dest / "m", random_model(seed=1).state_dict(), card_for("m"), overwrite=True)
    assert str(err.value) == f"{dest / 'm'}: cannot write the package (No space left on device)"
    assert snapshot(dest) == before
    monkeypatch.undo()

    real_rename = os.rename

    def rename_fails_on_the_swap(src, dst):
        if ".tmp-" in str(src):
            raise OSError(errno.EIO, "Input/output error")
        return real_rename(src, dst)

    monkeypatch.setattr(package.os, "rename", rename_fails_on_the_swap)
    with pytest.raises(ModelError, match="Input/output error"):
        write_package(dest / "m", random_model(seed=1).state_dict(), card_for("m"), overwrite=True)
    assert snapshot(dest) == before  # the old package was put back, the new one removed


@pytest.mark.parametrize("where", ["dest-is-a-file", "dest-under-a-file"])
def test_destination_problems_are_one_line(tmp_path, capsys, checkpoint, where):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    dest = blocker if where == "dest-is-a-file" else blocker / "sub"
    code, _, err = run_cli(capsys, "import-checkpoint", checkpoint, "--name", "m", "--dest", dest)
    assert_one_line_error(code, err, "cannot create the package here")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"] and blocker.read_text() == "not a folder"


def test_unwritable_destination_is_one_line(tmp_path, capsys, checkpoint, monkeypatch):
    """(root ignores permission bits, so the refusal of the file system is simulated where it happens)"""
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(package.tempfile, "mkdtemp", refuse)
    code, _, err = run_cli(capsys, "import-checkpoint", checkpoint, "--name", "m", "--dest", tmp_path / "d")
    assert_one_line_error(code, err, "cannot create the package here (Permission denied)")


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", "", "x\ny"])
def test_unsafe_package_names_are_refused(tmp_path, capsys, checkpoint, name):
    code, _, err = run_cli(capsys, "import-checkpoint", checkpoint, "--name", name, "--dest", tmp_path / "d")
    assert_one_line_error(code, err, "invalid package name")
    assert not (tmp_path / "d").exists() and not (tmp_path / "escape").exists()


def test_class_count_must_match_the_network(tmp_path):
    with pytest.raises(ModelError, match="the card names 3 classes but the weights output 5"):
        write_package(tmp_path / "m", random_model().state_dict(), {**card_for("m"), "class_names": ["A", "B", "C"]})
    assert not (tmp_path / "m").exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(ModelError, match="'class_names'"):
        write_package(tmp_path / "m", random_model().state_dict(), {**card_for("m"), "class_names": ["A", "A"]})
    # a card edited on disk (checksum still right): refused when the weights are read, in one line
    pkg = write_package(tmp_path / "m", random_model().state_dict(), card_for("m"))
    card = json.loads((pkg.path / "card.json").read_text())
    card["class_names"] = ["CN", "MCI", "AD", "X"]
    (pkg.path / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelError) as err:
        find_package(str(pkg.path)).load_model()
    assert str(err.value) == f"{pkg.path / 'weights.pt'}: the card names 4 classes but the weights output 5"


def test_weights_are_checked_before_they_are_read(tmp_path):
    pkg = write_package(tmp_path / "m", random_model().state_dict(), card_for("m"))
    with open(pkg.path / "weights.pt", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ModelError, match="SHA-256 mismatch"):
        find_package(str(pkg.path)).load_state_dict()


@pytest.fixture()
def hijack(tmp_path, monkeypatch):
    """A bundled default package 'demo', and a same-named package on $ADDIAGNOSIS_MODEL_PATH."""
    bundled, env = tmp_path / "bundled", tmp_path / "env"
    write_package(bundled / "demo", random_model(seed=0).state_dict(), {**card_for("demo"), "default": True})
    write_package(env / "demo", random_model(seed=5).state_dict(), {**card_for("demo"), "version": "impostor"})
    monkeypatch.setattr(discovery, "BUNDLED_DIR", bundled)
    monkeypatch.setenv("ADDIAGNOSIS_MODEL_PATH", str(env))
    scan = save_nifti(tmp_path / "scan.nii.gz", *make_scan("ras-1mm"))
    return bundled / "demo", env / "demo", scan


def test_report_names_the_package_and_its_weights(hijack, tmp_path, capsys):
    bundled, env, scan = hijack
    code, out, err = run_cli(capsys, "diagnose", scan, "--out", tmp_path / "plain", "--no-figures")
    assert code == 0, err
    model = json.loads((tmp_path / "plain" / "report.json").read_text())["model"]
    # a plain diagnose runs the bundled default, not the same-named package from the search path
    assert model["path"] == str(bundled.resolve()) and model["version"] == "test-1"
    assert model["weights_sha256"] == sha256_file(bundled / "weights.pt") == read_sha(bundled)
    # naming it picks the first on the search path, and the report says which one ran
    code, out, err = run_cli(capsys, "diagnose", scan, "--model", "demo", "--out", tmp_path / "named",
                             "--no-figures")
    assert code == 0, err
    model = json.loads((tmp_path / "named" / "report.json").read_text())["model"]
    assert model["path"] == str(env.resolve()) and model["version"] == "impostor"
    assert model["weights_sha256"] == sha256_file(env / "weights.pt")


def test_tiny_package_fixture_is_a_valid_package(tiny_package):
    pkg = find_package(str(tiny_package))
    assert pkg.card.format == cards.FORMAT and pkg.card.weights.file == "weights.pt"
    assert pkg.weights_sha256 == sha256_file(tiny_package / "weights.pt")
