"""Training data: frame selection, point maps in the first camera's frame, METHOD.md normalization,
both folder layouts and the resumable, fingerprinted per-clip cache."""

import csv
import math

import imageio.v2 as imageio
import numpy as np
import pytest
import torch

from fourdnex_core.atomic_write import partial_path
from fourdnex_core.conditioning import encode_condition
from fourdnex_core.geometry.synthetic import make_synthetic_scene
from fourdnex_core.representation import xyz_init_map
from fourdnex_core.tiny import make_tiny_models
from fourdnex_core.vae_io import encode_video
from fourdnex_core.video_io import write_video
from fourdnex_train import prepare as prepare_module
from fourdnex_train.cache import cache_path, read_cached_clip
from fourdnex_train.config import MemoryConfig, config_from_dict
from fourdnex_train.data_layout import find_clips
from fourdnex_train.layout_4dnex10m import folder_frame_range, npz_frame_range, read_trajectory
from fourdnex_train.pointmaps import RawClip, clip_points, fit_frames, frame_indices, process_clip
from fourdnex_train.prepare import cache_settings, load_encoders, prepare_dataset
from fourdnex_train.synthetic_data import write_synthetic_clip, write_synthetic_dataset


def test_frame_indices_take_stride_and_pad_by_reversal():
    assert frame_indices(10, 5) == [0, 1, 2, 3, 4]
    assert frame_indices(10, 3, stride=4) == [0, 4, 8]
    assert frame_indices(3, 7) == [0, 1, 2, 1, 0, 1, 2]
    assert frame_indices(1, 3) == [0, 0, 0]
    with pytest.raises(ValueError, match="no frames"):
        frame_indices(0, 5)


def _method_normalization(xyz, valid):
    """METHOD.md written out independently: per-frame per-axis 2/98 percentile clip, centre, one scale."""
    lows, highs = [], []
    for frame in range(xyz.shape[0]):
        points = xyz[frame][valid[frame]].double()
        lows.append(torch.quantile(points, 0.02, dim=0))
        highs.append(torch.quantile(points, 0.98, dim=0))
    low, high = torch.stack(lows), torch.stack(highs)
    centre, scale = (low + high) / 2, float(((high - low) / 2).max())
    clipped = torch.maximum(torch.minimum(xyz.double(), high[:, None, None]), low[:, None, None])
    return ((clipped - centre[:, None, None]) / scale).float()


def test_process_clip_moves_points_to_first_camera_and_normalizes_as_method(tmp_path):
    write_synthetic_clip(tmp_path / "clip", num_frames=4, height=30, width=40, seed=3, caption="a scene")
    clip = find_clips(tmp_path, "simple")[0].load()
    scene = make_synthetic_scene(4, 30, 40, seed=3, dtype=torch.float64)
    # The clip is stored in a random world frame; preparation must bring it back.
    torch.testing.assert_close(clip_points(clip).double(), scene.xyz, atol=2e-4, rtol=1e-5)

    processed = process_clip(clip, num_frames=5, height=32, width=32)
    assert processed.rgb.shape == processed.xyz.shape == (5, 32, 32, 3)
    assert processed.padded and processed.source_frames == 4
    expected_xyz = fit_frames(scene.xyz[[0, 1, 2, 3, 2]].float(), 32, 32, mode="nearest")
    valid = torch.ones(expected_xyz.shape[:3], dtype=torch.bool)
    torch.testing.assert_close(processed.xyz, _method_normalization(expected_xyz, valid), atol=1e-4, rtol=0)
    # In [-1, 1]; every frame centred ((min + max) / 2 = 0 per axis); one scale: the largest half-extent is 1.
    flat = processed.xyz.reshape(5, -1, 3)
    assert flat.abs().max() <= 1 + 1e-6
    torch.testing.assert_close((flat.amin(1) + flat.amax(1)) / 2, torch.zeros(5, 3), atol=1e-5, rtol=0)
    assert math.isclose(float(((flat.amax(1) - flat.amin(1)) / 2).max()), 1.0, abs_tol=1e-5)


def test_depth_and_cameras_become_first_camera_points():
    scene = make_synthetic_scene(3, 12, 16, seed=1, dtype=torch.float64)
    world_from_first = torch.eye(4, dtype=torch.float64)
    world_from_first[:3, 3] = torch.tensor([5.0, -2.0, 1.0])
    clip = RawClip(name="d", caption="c", rgb=scene.rgb.float(), depth=scene.depth.float(),
                   intrinsics=scene.K.float(), cams2world=(world_from_first @ scene.cams2world).float())
    torch.testing.assert_close(clip_points(clip).double(), scene.clean_xyz(), atol=1e-3, rtol=1e-4)
    with pytest.raises(ValueError, match="intrinsics and cams2world"):
        clip_points(RawClip(name="d", caption="c", rgb=scene.rgb.float(), depth=scene.depth.float()))


def test_mismatched_point_maps_are_a_clear_error():
    clip = RawClip(name="bad", caption="c", rgb=torch.rand(3, 8, 8, 3), xyz=torch.rand(3, 8, 6, 3))
    with pytest.raises(ValueError, match="do not match the RGB frames"):
        process_clip(clip, num_frames=5, height=16, width=16)


def _write_captions(root, group, rows):
    """caption/<group>_with_caption_upload.csv as the release names it (an extra column, as real CSVs have)."""
    (root / "caption").mkdir(exist_ok=True)
    with open(root / "caption" / f"{group}_with_caption_upload.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["number", "url", "caption"], *[[n, "http://x", c] for n, c in rows]])


def grey(t, height=16, width=16):
    """A flat grey frame of value 40 t (uint8 [H, W, 3])."""
    return np.full((height, width, 3), 40 * t, dtype=np.uint8)


def _write_10m_tree(root, angle=0.3):
    """A 4DNeX-10M tree in the release's layout, one clip of each kind:

    * a dynamic clip folder (frames 2..4 of raw/dynamic/<group>/<id>.mp4; depth, cameras, confidence);
    * a packed dynamic npz (frames, depth, a single focal, cameras inside);
    * a static npz (frames 1..3 of raw/static/<group>/<id>/images_4/; world points + poses in a pickled dict).
    Every source frame t is a flat grey of value 40 t, so the frames a reader picks can be checked.
    """
    write_video(root / "raw" / "dynamic" / "dynamic_1" / "00000028.mp4", np.stack([grey(t) for t in range(6)]), fps=24)
    clip_dir = root / "dynamic" / "dynamic_1" / "00000028" / "00000028_clip_2-4"
    clip_dir.mkdir(parents=True)
    for index in range(3):
        np.save(clip_dir / f"frame_{index:04d}.npy", np.full((16, 16), 2.0 + index, dtype=np.float32))
        np.save(clip_dir / f"conf_{index:04d}.npy", np.full((16, 16), 4.0, dtype=np.float32))
    rows = [[t, t * 0.1, 0, 0, math.cos(angle * t / 2), 0, 0, math.sin(angle * t / 2)] for t in range(3)]
    np.savetxt(clip_dir / "pred_traj.txt", np.array(rows))
    np.savetxt(clip_dir / "pred_intrinsics.txt", np.tile([[20, 0, 8, 0, 20, 8, 0, 0, 1]], (3, 1)))
    _write_captions(root, "dynamic_1", [(28, "a dog runs")])

    packed = root / "dynamic" / "dynamic_3" / "00000031"
    packed.mkdir(parents=True)
    cam_c2w = np.tile(np.eye(4, dtype=np.float32), (3, 1, 1))
    cam_c2w[:, 0, 3] = [0.0, 0.5, 1.0]
    np.savez(packed / "00000031_0-2.npz", images=np.stack([grey(t, 8, 8) for t in (1, 2, 3)]),
             depths=np.full((3, 16, 16), 3.0, dtype=np.float32), intrinsic=np.array(20.0), cam_c2w=cam_c2w)
    _write_captions(root, "dynamic_3", [(31, "a car turns")])

    frames_dir = root / "raw" / "static" / "scenes" / "00000007" / "images_4"
    frames_dir.mkdir(parents=True)
    for t in range(5):
        imageio.imwrite(frames_dir / f"{t:05d}.png", grey(t, 12, 16))
    static = root / "static" / "scenes" / "00000007"
    static.mkdir(parents=True)
    points = np.random.default_rng(1).random((3, 6, 8, 3)).astype(np.float32)
    poses = np.tile(np.eye(4, dtype=np.float32), (3, 1, 1))
    poses[:, 2, 3] = 5.0  # the first camera stands at z = 5 in the world
    np.savez(static / "frame_00001.png-frame_00003.png.npz", data={"pts3d": points, "poses": poses})
    _write_captions(root, "scenes", [(7, "a quiet room")])
    return clip_dir, points


def test_4dnex10m_layout_reads_every_clip_kind_of_the_release(tmp_path):
    clip_dir, points = _write_10m_tree(tmp_path)
    sources = {s.name: s for s in find_clips(tmp_path, "4dnex10m")}
    assert sorted(sources) == ["dynamic_dynamic_1_00000028_00000028_clip_2-4",
                               "dynamic_dynamic_3_00000031_00000031_0-2",
                               "static_scenes_00000007_frame_00001_png-frame_00003_png"]

    # A clip folder: frames 2..4 of the source video (split on the last "_"), depth, cameras, caption.
    folder = sources["dynamic_dynamic_1_00000028_00000028_clip_2-4"]
    clip = folder.load()
    assert clip.caption == "a dog runs" and clip.rgb.shape == (3, 16, 16, 3) and clip.depth.shape == (3, 16, 16)
    torch.testing.assert_close(clip.rgb.mean(dim=(1, 2, 3)), torch.tensor([80.0, 120.0, 160.0]) / 255, atol=0.02,
                               rtol=0)
    poses = read_trajectory(clip_dir / "pred_traj.txt")
    rotation_z = torch.tensor([[math.cos(0.3), -math.sin(0.3), 0], [math.sin(0.3), math.cos(0.3), 0], [0, 0, 1]],
                              dtype=torch.float64)
    torch.testing.assert_close(poses[1, :3, :3], rotation_z)
    torch.testing.assert_close(poses[2, :3, 3], torch.tensor([0.2, 0, 0], dtype=torch.float64))
    assert folder.confidence().shape == (3, 16, 16)
    torch.testing.assert_close(clip_points(clip)[0, 8, 8], torch.tensor([0.0, 0.0, 2.0]))  # principal point, depth 2

    # A packed dynamic npz: its own frames (resized to the depth size), a single focal at the centre pixel.
    packed = sources["dynamic_dynamic_3_00000031_00000031_0-2"].load()
    assert packed.caption == "a car turns" and packed.rgb.shape == (3, 16, 16, 3)
    torch.testing.assert_close(packed.rgb.mean(dim=(1, 2, 3)), torch.tensor([40.0, 80.0, 120.0]) / 255, atol=1e-3,
                               rtol=0)
    torch.testing.assert_close(packed.intrinsics[2], torch.tensor([[20.0, 0, 8], [0, 20.0, 8], [0, 0, 1]]))
    # Camera 2 stands 1 further along x than camera 0: its centre pixel at depth 3 is (1, 0, 3).
    torch.testing.assert_close(clip_points(packed)[2, 8, 8], torch.tensor([1.0, 0.0, 3.0]))

    # A static npz: world points and poses from the pickled dict, frames 1..3 of images_4.
    static = sources["static_scenes_00000007_frame_00001_png-frame_00003_png"].load()
    assert static.caption == "a quiet room" and static.rgb.shape == (3, 6, 8, 3)
    torch.testing.assert_close(static.rgb.mean(dim=(1, 2, 3)), torch.tensor([40.0, 80.0, 120.0]) / 255, atol=0.01,
                               rtol=0)
    expected = torch.from_numpy(points).clone()
    expected[..., 2] -= 5.0
    torch.testing.assert_close(clip_points(static), expected)  # moved into the first camera's frame


def test_4dnex10m_names_and_missing_pieces_are_clear(tmp_path):
    assert folder_frame_range("00000028_clip_10-58") == (10, 49)
    assert folder_frame_range("clip_3-5.done") == (3, 3)
    assert npz_frame_range("frame_00010.png-frame_00058.png") == (10, 49)
    assert npz_frame_range("clip_0010-clip_0058_v2") == (10, 49)
    with pytest.raises(ValueError, match="_<start>-<end>"):
        folder_frame_range("clip_final")
    with pytest.raises(ValueError, match="<prefix>_<start>-<prefix>_<end>"):
        npz_frame_range("frames")
    _write_10m_tree(tmp_path)
    _write_captions(tmp_path, "dynamic_1", [(29, "another video")])  # the clip's own row is gone
    (tmp_path / "raw" / "static" / "scenes" / "00000007" / "images_4" / "00004.png").unlink()
    (tmp_path / "raw" / "static" / "scenes" / "00000007" / "images_4" / "00003.png").unlink()
    sources = {s.name: s for s in find_clips(tmp_path, "4dnex10m")}
    with pytest.raises(ValueError, match="No caption for video 00000028 in caption/dynamic_1_with_caption_upload.csv"):
        sources["dynamic_dynamic_1_00000028_00000028_clip_2-4"].load()
    with pytest.raises(ValueError, match="only 2 of the 3 frames"):
        sources["static_scenes_00000007_frame_00001_png-frame_00003_png"].load()


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    return make_tiny_models(tmp_path_factory.mktemp("models"))


def _config(tmp_path, tiny, **data):
    values = {"root": str(tmp_path / "clips"), "cache_dir": str(tmp_path / "cache"), "num_frames": 5,
              "height": 32, "width": 32, "cache_dtype": "fp32", **data}
    return config_from_dict({"data": values, "models": {"root": str(tiny.comfy_models)}})


def test_prepare_caches_clips_reports_failures_and_resumes(tmp_path, tiny_models, monkeypatch):
    write_synthetic_dataset(tmp_path / "clips", num_clips=2, num_frames=4, height=30, width=40)
    (tmp_path / "clips" / "broken").mkdir()
    config = _config(tmp_path, tiny_models)
    encoders = load_encoders(config.models, torch.device("cpu"))
    report = prepare_dataset(config, encoders, progress=False)
    assert sorted(report.names("prepared")) == ["clip_000", "clip_001"]
    assert report.names("failed") == ["broken"]
    assert "caption.txt" in dict((name, detail) for name, _, detail in report.rows)["broken"]
    assert "broken" in (tmp_path / "cache" / "prepare_report.csv").read_text()

    cached = read_cached_clip(cache_path(tmp_path / "cache", "clip_000"))
    assert cached.rgb_latent.shape == cached.xyz_latent.shape == (16, 2, 4, 4)
    assert cached.condition.shape == (20, 2, 4, 8)
    assert cached.image_embeds.shape == (257, 24) and cached.prompt_embeds.shape == (512, 32)
    assert cached.metadata["prompt"].endswith("POINTMAP_STYLE.")
    # The cache holds exactly what inference computes: condition from the image + XYZ init map,
    # XYZ latent from the normalized point maps written as video ((xyz + 1) / 2 -> VAE range).
    source = next(s for s in find_clips(tmp_path / "clips", "simple") if s.name == "clip_000")
    processed = process_clip(source.load(), num_frames=5, height=32, width=32)
    condition = encode_condition(encoders.vae, processed.rgb[0].permute(2, 0, 1), xyz_init_map(32, 32), 5,
                                 progress=False)[0]
    torch.testing.assert_close(cached.condition, condition)
    xyz_latent = encode_video(encoders.vae, processed.xyz.permute(3, 0, 1, 2)[None], progress=False)[0]
    torch.testing.assert_close(cached.xyz_latent, xyz_latent)

    # Resume: finished clips are skipped without loading any encoder; a half-written file is ignored.
    partial_path(tmp_path / "cache" / "clip_002.safetensors").write_bytes(b"partial")
    monkeypatch.setattr(prepare_module, "load_encoders", lambda *a: pytest.fail("encoders loaded needlessly"))
    again = prepare_dataset(config, progress=False)
    assert sorted(again.names("skipped")) == ["clip_000", "clip_001"] and again.names("prepared") == []

    # Changed settings invalidate the cache.
    changed = prepare_dataset(_config(tmp_path, tiny_models, condition_xyz="first_frame"), encoders, progress=False)
    assert sorted(changed.names("prepared")) == ["clip_000", "clip_001"]


def test_prepare_tiles_the_vae_with_memory_vae_tiling_and_says_so_in_the_fingerprint(tmp_path, tiny_models):
    config = _config(tmp_path, tiny_models)
    assert not load_encoders(config.models, torch.device("cpu"), config.memory).vae.use_tiling
    config.memory = MemoryConfig(vae_tiling=True, vae_tile_size=128, vae_tile_overlap=32)
    vae = load_encoders(config.models, torch.device("cpu"), config.memory).vae
    assert vae.use_tiling and vae.tile_sample_min_height == 128
    plain = cache_settings(config.data, config.models)
    assert cache_settings(config.data, config.models, MemoryConfig()) == plain  # old caches stay valid
    assert cache_settings(config.data, config.models, config.memory) == {**plain, "vae_tiling": [128, 32]}


def test_prepare_writes_its_report_when_the_encoders_fail_to_load(tmp_path, tiny_models, monkeypatch):
    write_synthetic_dataset(tmp_path / "clips", num_clips=2, num_frames=4, height=30, width=40)
    (tmp_path / "clips" / "broken").mkdir()

    def fail(*args):
        raise OSError("no such file: umt5_xxl_fp16.safetensors")

    monkeypatch.setattr(prepare_module, "load_encoders", fail)
    with pytest.raises(OSError, match="umt5"):
        prepare_dataset(_config(tmp_path, tiny_models), progress=False)
    with open(tmp_path / "cache" / "prepare_report.csv", newline="") as handle:
        rows = {row["clip"]: row for row in csv.DictReader(handle)}
    assert rows["broken"]["status"] == "failed" and "caption.txt" in rows["broken"]["detail"]
    assert rows["clip_000"]["status"] == rows["clip_001"]["status"] == "failed"
    assert "the run stopped (OSError: no such file: umt5" in rows["clip_000"]["detail"]
