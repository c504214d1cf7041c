"""Atomic writes: every writer of the project leaves the earlier file whole when interrupted.

Each writer is run on a destination that already holds an "earlier result"; the write is cut off
(Ctrl-C as KeyboardInterrupt, or an error) either in the middle of writing or just before the
rename. The earlier file must be byte-identical afterwards and no temporary file may remain.
"""

import numpy as np
import pytest
import torch

import fourdnex_core.atomic_write as atomic_write
from fourdnex_core.atomic_write import atomic_path
from fourdnex_core.geometry.export_viewer import write_viewer_points
from fourdnex_core.geometry.export_cameras import CameraSet, write_cameras_json, write_transforms_json
from fourdnex_core.geometry.export_glb import write_glb
from fourdnex_core.geometry.export_ply import write_ply
from fourdnex_core.geometry.pointcloud import PointCloud
from fourdnex_core.loading.safetensors_io import save_tensors, write_safetensors
from fourdnex_core.lora.convert import write_fourdnex_lora
from fourdnex_core.lora.formats import LoraLayer
from fourdnex_core.scene_file import Scene, load_scene, save_scene
from fourdnex_core.video_io import save_frame, write_video

EARLIER = b"the earlier run's result"


def _cloud(count: int = 10) -> PointCloud:
    rng = np.random.default_rng(0)
    return PointCloud(rng.normal(size=(count, 3)).astype(np.float32), rng.integers(0, 256, (count, 3), np.uint8))


def _scene() -> Scene:
    rng = np.random.default_rng(1)
    return Scene(rgb=rng.integers(0, 256, (2, 4, 6, 3), np.uint8), xyz=rng.normal(size=(2, 4, 6, 3)).astype(np.float32))


def _cameras() -> CameraSet:
    return CameraSet(np.array([[5.0, 0, 3], [0, 5, 2], [0, 0, 1]]), np.stack([np.eye(4)] * 2), 6, 4)


# name -> (file name, writer(path))
WRITERS = {
    "scene": ("scene.npz", lambda path: save_scene(_scene(), path)),
    "video": ("rgb.mp4", lambda path: write_video(path, np.zeros((3, 8, 8, 3), np.uint8), fps=8)),
    "png": ("frame.png", lambda path: save_frame(path, np.zeros((8, 8, 3), np.uint8))),
    "ply": ("frame.ply", lambda path: write_ply(path, _cloud())),
    "glb": ("points.glb", lambda path: write_glb(path, [_cloud(), _cloud(5)], fps=8)),
    "viewer": ("points.bin", lambda path: write_viewer_points(path, [_cloud()], 8)),
    "cameras": ("cameras.json", lambda path: write_cameras_json(path, _cameras())),
    "transforms": ("transforms.json", lambda path: write_transforms_json(path, _cameras(), ["a.png", "b.png"])),
    "tensors": ("x.safetensors", lambda path: save_tensors(path, {"x": torch.ones(3)}, {"k": "v"})),
    "streamed": ("y.safetensors",
                 lambda path: write_safetensors(path, {"y": (torch.float32, (2,))}, iter([("y", torch.ones(2))]))),
    "lora": ("l.safetensors", lambda path: write_fourdnex_lora(
        path, [LoraLayer("blocks.0.attn1.to_q", torch.ones(2, 4), torch.ones(4, 2), 2.0)])),
}


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_each_writer_writes_through_a_rename(tmp_path, name):
    file_name, writer = WRITERS[name]
    path = tmp_path / file_name
    assert writer(path) == path and path.stat().st_size > 0
    assert [p.name for p in tmp_path.iterdir()] == [file_name]


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, OSError])
@pytest.mark.parametrize("name", sorted(WRITERS))
def test_each_writer_interrupted_before_the_rename_keeps_the_earlier_file(tmp_path, monkeypatch, name, interruption):
    file_name, writer = WRITERS[name]
    path = tmp_path / file_name
    path.write_bytes(EARLIER)

    def interrupted(source, destination):
        assert source.stat().st_size > 0  # the new file was complete, only the rename was cut off
        raise interruption("interrupted")

    monkeypatch.setattr(atomic_write.os, "replace", interrupted)
    with pytest.raises(interruption):
        writer(path)
    assert path.read_bytes() == EARLIER
    assert [p.name for p in tmp_path.iterdir()] == [file_name]


def test_video_interrupted_mid_stream_keeps_the_earlier_video(tmp_path):
    path = tmp_path / "rgb.mp4"
    write_video(path, np.full((2, 8, 8, 3), 200, np.uint8), fps=8)
    earlier = path.read_bytes()

    def frames():
        yield np.zeros((8, 8, 3), np.uint8)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_video(path, frames(), fps=8)
    assert path.read_bytes() == earlier
    assert [p.name for p in tmp_path.iterdir()] == ["rgb.mp4"]


def test_scene_interrupted_mid_write_keeps_the_earlier_scene(tmp_path, monkeypatch):
    path = save_scene(_scene(), tmp_path / "scene.npz")

    def half_written(handle, **arrays):
        handle.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez_compressed", half_written)
    with pytest.raises(KeyboardInterrupt):
        save_scene(_scene(), path)
    np.testing.assert_array_equal(load_scene(path).xyz, _scene().xyz)
    assert [p.name for p in tmp_path.iterdir()] == ["scene.npz"]


def test_atomic_path_refuses_a_writer_that_wrote_nothing(tmp_path):
    path = tmp_path / "kept.txt"
    path.write_bytes(EARLIER)
    with pytest.raises(FileNotFoundError, match="Nothing was written"), atomic_path(path):
        pass
    assert path.read_bytes() == EARLIER


def test_atomic_path_keeps_the_suffix_and_hides_the_temporary_file(tmp_path):
    with atomic_path(tmp_path / "sub" / "rgb.mp4", suffix=".mp4") as temporary:
        assert temporary.parent == tmp_path / "sub" and temporary.name.startswith(".rgb.mp4.")
        assert temporary.suffix == ".mp4" and ".partial" in temporary.name
        assert not list((tmp_path / "sub").glob("[!.]*"))
        temporary.write_bytes(b"x")
    assert (tmp_path / "sub" / "rgb.mp4").read_bytes() == b"x"


def test_atomic_folder_replaces_an_earlier_folder_whole(tmp_path):
    folder = tmp_path / "ply"
    folder.mkdir()
    for name in ("frame_00000.ply", "frame_00001.ply", "frame_00002.ply"):
        (folder / name).write_bytes(EARLIER)
    with atomic_write.atomic_folder(folder) as staged:
        assert staged.parent == tmp_path and staged.name.startswith(".ply.") and not list(staged.iterdir())
        write_ply(staged / "frame_00000.ply", _cloud())
        assert (folder / "frame_00002.ply").read_bytes() == EARLIER  # the earlier folder stays until the end
    assert [path.name for path in folder.iterdir()] == ["frame_00000.ply"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["ply"]  # nothing hidden left


@pytest.mark.parametrize("interruption", [RuntimeError, KeyboardInterrupt])
def test_atomic_folder_interrupted_keeps_the_earlier_folder(tmp_path, interruption):
    folder = tmp_path / "splats"
    folder.mkdir()
    (folder / "frame_00000.ply").write_bytes(EARLIER)
    with pytest.raises(interruption):
        with atomic_write.atomic_folder(folder) as staged:
            write_ply(staged / "frame_00000.ply", _cloud())
            raise interruption()
    assert [path.name for path in folder.iterdir()] == ["frame_00000.ply"]
    assert (folder / "frame_00000.ply").read_bytes() == EARLIER
    assert sorted(path.name for path in tmp_path.iterdir()) == ["splats"]


def test_point_writers_refuse_non_finite_positions_and_write_nothing(tmp_path):
    cloud = _cloud()
    cloud.positions[3, 0] = np.inf
    for name, write in (("a.ply", write_ply), ("b.glb", lambda path, c: write_glb(path, [c]))):
        with pytest.raises(ValueError, match="non-finite positions"):
            write(tmp_path / name, cloud)
    assert list(tmp_path.iterdir()) == []
