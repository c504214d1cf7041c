"""The release-style Adam solver (``benchmarks/postopt_reference.py``): a comparison baseline that
lives beside the benchmark, not in the library or the command line."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fourdnex_core.cli import main
from fourdnex_core.geometry.cameras import intrinsics_matrix, rotation_angle_degrees
from fourdnex_core.geometry.postopt import post_optimize
from fourdnex_core.geometry.synthetic import make_synthetic_scene
from fourdnex_core.scene_file import save_scene

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


@pytest.fixture(scope="module")
def reference():
    spec = importlib.util.spec_from_file_location("postopt_reference", BENCHMARKS / "postopt_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rotation_errors(result, scene) -> torch.Tensor:
    return rotation_angle_degrees(result.cams2world[:, :3, :3].double(), scene.cams2world[:, :3, :3].double())


def test_6d_identity_is_a_rotation_and_the_release_start_is_not(reference):
    torch.testing.assert_close(reference.rotation_6d_to_matrix(reference.identity_rotation_6d(2)),
                               torch.eye(3).expand(2, 3, 3))
    equal_columns = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0])
    matrix = reference.rotation_6d_to_matrix(equal_columns)
    assert not torch.allclose(matrix.T @ matrix, torch.eye(3), atol=1e-3)


def test_reference_mode_starts_like_the_release_and_lowers_the_error(reference):
    scene = make_synthetic_scene(3, 12, 18, invalid_fraction=0.05, seed=17)
    start = reference.post_optimize_reference(scene.xyz, iterations=0, progress=False)
    torch.testing.assert_close(start.cams2world, torch.eye(4).expand(3, 4, 4))
    torch.testing.assert_close(start.K, intrinsics_matrix(*torch.tensor([1.2 * 18, 1.2 * 12, 8.5, 5.5]).unbind()))
    few = reference.post_optimize_reference(scene.xyz, iterations=5, progress=False)
    assert float(few.K[0, 0]) == pytest.approx(1.2 * 18, rel=0.01), "Adam barely moves the focal in 5 steps"
    trained = reference.post_optimize_reference(scene.xyz, iterations=150, progress=False)
    assert bool(torch.isfinite(trained.cams2world).all()) and bool(torch.isfinite(trained.depth).all())

    def mean_squared_error(result):  # the objective Adam minimises
        return float((result.point_errors[result.valid] ** 2).mean())

    assert mean_squared_error(trained) < 0.5 * mean_squared_error(start)
    ours = post_optimize(scene.xyz)
    assert float(rotation_errors(ours, scene).max()) < float(rotation_errors(trained, scene).max())


def test_the_library_and_the_command_line_no_longer_carry_it(tmp_path, capsys):
    assert importlib.util.find_spec("fourdnex_core.geometry.postopt.reference") is None
    library = [path.relative_to(ROOT).as_posix() for path in sorted((ROOT / "fourdnex_core").rglob("*.py"))
               if "post_optimize_reference" in path.read_text(encoding="utf-8")]
    assert library == []
    save_scene(make_synthetic_scene(2, 12, 18, seed=22).to_scene_file(), tmp_path / "scene.npz")
    with pytest.raises(SystemExit) as exit_info:
        main(["postopt", str(tmp_path), "--reference"])
    assert exit_info.value.code == 2 and "unrecognized arguments: --reference" in capsys.readouterr().err


@pytest.mark.slow  # a fresh interpreter
def test_the_benchmark_finds_it_beside_itself():
    # bench_postopt.py imports postopt_reference from its own folder, as `python benchmarks/bench_postopt.py` runs it.
    result = subprocess.run([sys.executable, str(BENCHMARKS / "bench_postopt.py"), "--help"], capture_output=True,
                            text=True, check=False, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "--adam-iterations" in result.stdout
