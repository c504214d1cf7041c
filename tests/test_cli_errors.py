"""The top-level error handler of ``fourdnex`` and ``fourdnex-train``: one line and exit 2 for every
expected failure, exit 130 for Ctrl-C with nothing half-written, exit 1 and one line for a bug."""

import errno

import numpy as np
import pytest
import torch

import fourdnex_core.geometry.export_scene as export_command  # where fourdnex export writes each format
import fourdnex_core.geometry.export_ply as export_ply
from fourdnex_core.cli import main
from fourdnex_core.cli.errors import describe, run_command
from fourdnex_core.scene_file import Scene, save_scene
from fourdnex_train.cli import main as train_main


@pytest.fixture
def scene_dir(tmp_path):
    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(3, 6, 8, 3)).astype(np.float32)
    xyz[..., 2] += 4.0
    save_scene(Scene(rng.integers(0, 256, (3, 6, 8, 3), np.uint8), xyz), tmp_path / "scene" / "scene.npz")
    return tmp_path / "scene"


def _one_error_line(capsys, prog: str = "fourdnex") -> str:
    """The one error line (progress bars aside) on stderr; no traceback."""
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith(f"{prog} ")]
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_ctrl_c_during_export_exits_130_and_keeps_the_earlier_export(scene_dir, monkeypatch, capsys):
    assert main(["export", str(scene_dir), "--ply"]) == 0
    ply = scene_dir / "export" / "ply"
    earlier = {path.name: path.read_bytes() for path in ply.iterdir()}
    capsys.readouterr()
    calls = []

    def interrupted_write(handle_path, cloud):
        calls.append(handle_path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(handle_path, cloud)

    original = export_ply.write_ply
    monkeypatch.setattr(export_command, "write_ply", interrupted_write)
    assert main(["export", str(scene_dir), "--ply", "--max-points", "10", "--overwrite"]) == 130
    assert "interrupted" in capsys.readouterr().err
    # the frame being written when Ctrl-C came keeps its earlier file; no temporary file is left
    assert sorted(path.name for path in ply.iterdir()) == sorted(earlier)
    assert (ply / "frame_00001.ply").read_bytes() == earlier["frame_00001.ply"]


def test_an_output_folder_below_a_file_is_one_line_and_exit_2(scene_dir, tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    assert main(["export", str(scene_dir), "--ply", "--out", str(tmp_path / "a_file" / "out")]) == 2
    line = _one_error_line(capsys)
    assert "a_file" in line


def test_an_over_long_file_name_is_one_line_and_exit_2(scene_dir, tmp_path, capsys):
    assert main(["export", str(scene_dir), "--ply", "--out", str(tmp_path / ("x" * 300))]) == 2
    assert "too long" in _one_error_line(capsys)


def test_an_unwritable_folder_is_one_line_naming_the_fix(scene_dir, monkeypatch, capsys):
    def refused(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(export_command, "write_ply", refused)
    assert main(["export", str(scene_dir), "--ply"]) == 2
    line = _one_error_line(capsys)
    assert "Permission denied" in line and "choose a folder you can write to" in line


def test_a_bug_is_one_line_exit_1_and_the_traceback_only_with_verbose(scene_dir, monkeypatch, capsys):
    def buggy(*args, **kwargs):
        raise AssertionError("shapes disagree")

    monkeypatch.setattr(export_command, "write_ply", buggy)
    assert main(["export", str(scene_dir), "--ply"]) == 1
    line = _one_error_line(capsys)
    assert "AssertionError: shapes disagree" in line and "this is a bug" in line and "--verbose" in line
    assert main(["-v", "export", str(scene_dir), "--ply"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_out_of_memory_names_the_way_out():
    line = describe(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 829.00 GiB.\nmore text"))
    assert line.startswith("out of memory (CUDA out of memory. Tried to allocate 829.00 GiB.)")
    assert "--frames" in line and "--low-vram" in line


def test_run_command_codes():
    assert run_command("p", "c", lambda: None) == 0
    assert run_command("p", "c", lambda: 3) == 3

    def raising(error):
        def handler():
            raise error
        return handler

    assert run_command("p", "c", raising(ValueError("bad"))) == 2
    assert run_command("p", "c", raising(FileNotFoundError("gone"))) == 2
    assert run_command("p", "c", raising(KeyboardInterrupt())) == 130
    assert run_command("p", "c", raising(TypeError("bug"))) == 1


def test_trainer_cli_errors_are_one_line(tmp_path, capsys):
    assert train_main(["run", str(tmp_path / "missing.toml")]) == 2
    assert "missing.toml" in _one_error_line(capsys, "fourdnex-train")
    assert train_main(["curate", str(tmp_path / "no_clips"), "--out", str(tmp_path / "report")]) == 2
    _one_error_line(capsys, "fourdnex-train")
