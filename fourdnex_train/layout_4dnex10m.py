"""The 4DNeX-10M release layout (``[data] layout = "4dnex10m"``), as the authors' loader reads it.

``root`` is the release's ``data/`` folder::

    root/caption/<group>_with_caption_upload.csv   columns ``number`` (the video id as an integer)
                                                   and ``caption``; other columns are ignored
    root/raw/dynamic/<group>/<id>.mp4              source videos of the dynamic clips
    root/raw/static/<group>/<id>/images_4/         source frames of the static clips (sorted by name)

    root/dynamic/<group>/<id>/<clip>/              a dynamic clip, MonST3R-style annotations:
        frame_0000.npy ...                         [H, W] depth of clip frame t = 0 .. length - 1
        pred_traj.txt                              per frame: time tx ty tz qw qx qy qz (camera-to-world)
        pred_intrinsics.txt                        per frame a 3x3 intrinsics matrix (9 numbers)
        conf_0000.npy ...                          optional [H, W] confidence (curation only)
    root/dynamic/<group>/<id>/<clip>.npz           a packed dynamic clip (the release's dynamic_3):
                                                   images [T, H, W(, 3)], depths [T, H, W],
                                                   intrinsic (a focal, [3, 3], [1, 3, 3] or [T, 3, 3]),
                                                   cam_c2w [T, 4, 4]
    root/static/<group>/<id>/<clip>.npz            a static clip: pts3d [T, H, W, 3] world points and
                                                   poses [T, 4, 4] camera-to-world, stored in a
                                                   pickled dict inside the npz

Frame ranges come from the clip's name. A clip folder is ``<anything>_<start>-<end>`` (split on the
last ``_``; text after the first ``.`` is ignored): source frames ``start`` to ``end``, both
included, of ``raw/dynamic/<group>/<id>.mp4``. A static npz is ``<prefix>_<start>-<prefix>_<end>``
(each number may carry ``.png``): frames ``start`` to ``end`` (0-based) of the sorted
``images_4/`` list. A packed dynamic npz carries its own frames. RGB is resized to the
annotations' size (they were computed at that size). A clip's caption is the row of its video id
in its group's CSV.

Npz files are unpickled (the release stores static clips as a pickled dict): prepare only
datasets you trust. ``fourdnex_train/README.md`` lists what of this could not be checked against the release.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch

from fourdnex_train.clip_source import ClipSource, frames_to_float, load_array, no_confidence, read_video, resize_rgb_to
from fourdnex_train.pointmaps import RawClip

logger = logging.getLogger(__name__)

CAPTION_SUFFIX = "_with_caption_upload.csv"
STATIC_FRAMES = "images_4"
_FOLDER_SPAN = re.compile(r"^(\d+)-(\d+)$")
_NPZ_START = re.compile(r"(?:^|_)(\d+)(?:\.png)?$")
_NPZ_END = re.compile(r"(?:^|_)(\d+)(?:\.png)?(?=_|$)")


# -- names, captions, cameras ----------------------------------------------------------------------


def folder_frame_range(name: str) -> tuple[int, int]:
    """``(start, count)`` of a clip folder ``<anything>_<start>-<end>`` (end included)."""
    span = name.split(".")[0].rpartition("_")[2]
    match = _FOLDER_SPAN.match(span)
    if match is None:
        raise ValueError(f"Clip folder {name!r} does not end in _<start>-<end> (e.g. 00000028_0-48); the "
                         "frame range of a 4DNeX-10M clip comes from its folder name.")
    return _range(name, int(match.group(1)), int(match.group(2)))


def npz_frame_range(stem: str) -> tuple[int, int]:
    """``(start, count)`` of a static clip file ``<prefix>_<start>-<prefix>_<end>`` (end included)."""
    parts = stem.split("-")
    start = _NPZ_START.search(parts[0]) if len(parts) == 2 else None
    end = _NPZ_END.search(parts[1]) if len(parts) == 2 else None
    if start is None or end is None:
        raise ValueError(f"Clip file {stem!r}.npz is not named <prefix>_<start>-<prefix>_<end> (e.g. "
                         "frame_0000.png-frame_0048.png.npz); the frame range of a static clip comes from its name.")
    return _range(stem, int(start.group(1)), int(end.group(1)))


def _range(name: str, start: int, end: int) -> tuple[int, int]:
    if end < start:
        raise ValueError(f"Clip {name!r} ends (frame {end}) before it starts (frame {start}).")
    return start, end - start + 1


def read_captions(path: Path) -> dict[int, str]:
    """A caption CSV (columns ``number``, ``caption``) as {video id: caption}; {} when the file is missing."""
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    if rows and not {"number", "caption"} <= set(rows[0]):
        raise ValueError(f"{path}: a caption CSV needs the columns 'number' and 'caption', has {sorted(rows[0])}.")
    captions = {}
    for line, row in enumerate(rows, start=2):
        number = row["number"].strip()
        if not number:
            continue
        try:
            captions[int(float(number))] = row["caption"].strip()
        except ValueError as error:
            raise ValueError(f"{path}, line {line}: number {number!r} is not a video id (an integer).") from error
    return captions


def quaternion_wxyz_to_matrix(quaternion: torch.Tensor) -> torch.Tensor:
    """Unit quaternions [..., 4] (w, x, y, z) -> rotation matrices [..., 3, 3]."""
    q = quaternion / quaternion.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]
    return torch.stack(rows, dim=-1).reshape(*q.shape[:-1], 3, 3)


def read_trajectory(path: Path) -> torch.Tensor:
    """A ``pred_traj.txt`` (time tx ty tz qw qx qy qz per line) as cams2world [F, 4, 4] float64."""
    table = torch.from_numpy(np.loadtxt(path, dtype=np.float64, ndmin=2))
    if table.shape[1] != 8:
        raise ValueError(f"{path}: expected 8 numbers per line (time tx ty tz qw qx qy qz), got {table.shape[1]}.")
    poses = torch.zeros(table.shape[0], 4, 4, dtype=torch.float64)
    poses[:, :3, :3] = quaternion_wxyz_to_matrix(table[:, 4:8])
    poses[:, :3, 3] = table[:, 1:4]
    poses[:, 3, 3] = 1.0
    return poses


def intrinsics_matrices(intrinsic: np.ndarray, frames: int, height: int, width: int) -> torch.Tensor:
    """A packed clip's ``intrinsic`` as [frames, 3, 3]: a single focal (principal point at the centre
    pixel (W // 2, H // 2), as the release assumes), one [3, 3] / [1, 3, 3] for every frame, or [T, 3, 3]."""
    values = torch.from_numpy(np.asarray(intrinsic, dtype=np.float64))
    if values.ndim == 0:
        focal = float(values)
        values = torch.tensor([[focal, 0, width // 2], [0, focal, height // 2], [0, 0, 1]], dtype=torch.float64)
    if values.shape[-2:] != (3, 3) or values.ndim > 3:
        raise ValueError(f"intrinsic must be a focal, [3, 3] or [T, 3, 3], got {tuple(values.shape)}.")
    values = values.reshape(-1, 3, 3)
    if values.shape[0] == 1:
        values = values.expand(frames, 3, 3)
    if values.shape[0] < frames:
        raise ValueError(f"intrinsic has {values.shape[0]} matrices for {frames} frames.")
    return values[:frames]


# -- reading one clip ------------------------------------------------------------------------------


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an npz file, with the entries of any pickled dict inside merged in (the release
    stores a static clip as one 0-d object array holding {"pts3d": ..., "poses": ...})."""
    arrays = {}
    with np.load(path, allow_pickle=True) as npz:
        for key in npz.files:
            value = npz[key]
            content = value.item() if value.shape == () and value.dtype == object else None
            if isinstance(content, dict):
                arrays.update(content)
            else:
                arrays[key] = value
    return arrays


def _require(arrays: dict[str, np.ndarray], keys: tuple[str, ...], path: Path, kind: str) -> None:
    missing = [key for key in keys if key not in arrays]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)} (has {', '.join(sorted(arrays)) or 'nothing'}); a "
                         f"{kind} 4DNeX-10M clip stores {', '.join(keys)}.")


def _load_folder_clip(clip_dir: Path, video: Path, caption: str, name: str) -> RawClip:
    """A dynamic clip folder: depth + cameras, RGB frames from the group's source video."""
    start, count = folder_frame_range(clip_dir.name)
    depth_files = [clip_dir / f"frame_{t:04d}.npy" for t in range(count)]
    missing = [path.name for path in depth_files if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"{clip_dir} lacks {len(missing)} of its {count} depth maps (first: {missing[0]}); "
                                f"the folder name promises frames {start}..{start + count - 1}.")
    cams2world = read_trajectory(clip_dir / "pred_traj.txt")
    intrinsics = torch.from_numpy(np.loadtxt(clip_dir / "pred_intrinsics.txt", dtype=np.float64)).reshape(-1, 3, 3)
    if min(cams2world.shape[0], intrinsics.shape[0]) < count:
        raise ValueError(f"{clip_dir}: pred_traj.txt has {cams2world.shape[0]} and pred_intrinsics.txt "
                         f"{intrinsics.shape[0]} frames, fewer than the {count} of the folder name.")
    depth = torch.stack([load_array(path).float() for path in depth_files])
    rgb = resize_rgb_to(read_video(video, list(range(start, start + count))), depth.shape[1:], name)
    return RawClip(name=name, caption=caption, rgb=rgb, depth=depth, intrinsics=intrinsics[:count].float(),
                   cams2world=cams2world[:count].float())


def _load_packed_dynamic(path: Path, caption: str, name: str) -> RawClip:
    """A packed dynamic npz: its own frames, depth, intrinsics and cameras."""
    arrays = read_npz(path)
    _require(arrays, ("images", "depths", "intrinsic", "cam_c2w"), path, "packed dynamic")
    rgb = frames_to_float(arrays["images"])
    frames = rgb.shape[0]
    depth = torch.from_numpy(np.asarray(arrays["depths"][:frames], dtype=np.float32))
    cams2world = torch.from_numpy(np.asarray(arrays["cam_c2w"][:frames], dtype=np.float32))
    intrinsics = intrinsics_matrices(arrays["intrinsic"], frames, depth.shape[1], depth.shape[2])
    return RawClip(name=name, caption=caption, rgb=resize_rgb_to(rgb, depth.shape[1:], name), depth=depth,
                   intrinsics=intrinsics.float(), cams2world=cams2world)


def _load_static(path: Path, frames_dir: Path, caption: str, name: str) -> RawClip:
    """A static npz: world point maps + cameras, RGB from the ``images_4`` frames its name selects."""
    arrays = read_npz(path)
    _require(arrays, ("pts3d", "poses"), path, "static")
    points = torch.from_numpy(np.asarray(arrays["pts3d"], dtype=np.float32))
    poses = torch.from_numpy(np.asarray(arrays["poses"], dtype=np.float32))
    start, count = npz_frame_range(path.stem)
    if points.shape[0] != count or poses.shape[0] != count:
        raise ValueError(f"{path}: pts3d has {points.shape[0]} and poses {poses.shape[0]} frames, but the name "
                         f"promises {count} (frames {start}..{start + count - 1}).")
    rgb = read_video(frames_dir, list(range(start, start + count)))
    return RawClip(name=name, caption=caption, rgb=resize_rgb_to(rgb, points.shape[1:3], name), xyz=points,
                   cams2world=poses)


def _with_caption(load: Callable[[str], RawClip], captions: dict[int, str], video_id: str, group: str) -> RawClip:
    """Run ``load(caption)`` once the clip's caption is known; a clip without one is an error."""
    caption = captions.get(int(video_id)) if video_id.isdigit() else None
    if not caption:
        raise ValueError(f"No caption for video {video_id} in caption/{group}{CAPTION_SUFFIX}; add its row "
                         "(number, caption).")
    return load(caption)


def _confidence(clip_dir: Path) -> torch.Tensor | None:
    files = sorted(clip_dir.glob("conf_*.npy"))
    return torch.stack([load_array(path).float() for path in files]) if files else None


# -- finding the clips -----------------------------------------------------------------------------


def _folders(parent: Path) -> list[Path]:
    if not parent.is_dir():
        return []
    return sorted(path for path in parent.iterdir() if path.is_dir() and not path.name.startswith("."))


def _clip_name(kind: str, group: str, video_id: str, clip: str) -> str:
    return f"{kind}_{group}_{video_id}_{clip}".replace(".", "_")


def _clip_source(name: str, path: Path, load: Callable[[str], RawClip], captions: dict[int, str], video_id: str,
                 group: str, confidence: Callable[[], torch.Tensor | None] = no_confidence) -> ClipSource:
    return ClipSource(name=name, path=path, load=partial(_with_caption, load, captions, video_id, group),
                      confidence=confidence)


def _video_clips(root: Path, kind: str, group: str, video: Path, captions: dict[int, str]) -> list[ClipSource]:
    """The clips of one video folder ``<kind>/<group>/<id>/`` (other files are ignored)."""
    video_id, clips = video.name, []
    for entry in sorted(path for path in video.iterdir() if not path.name.startswith(".")):
        if kind == "dynamic" and entry.is_dir():
            name = _clip_name(kind, group, video_id, entry.name)
            source = root / "raw" / "dynamic" / group / f"{video_id}.mp4"
            load = partial(_load_folder_clip, entry, source, name=name)
            clips.append(_clip_source(name, entry, load, captions, video_id, group, partial(_confidence, entry)))
        elif entry.suffix == ".npz":
            name = _clip_name(kind, group, video_id, entry.stem)
            if kind == "dynamic":
                load = partial(_load_packed_dynamic, entry, name=name)
            else:
                frames_dir = root / "raw" / "static" / group / video_id / STATIC_FRAMES
                load = partial(_load_static, entry, frames_dir, name=name)
            clips.append(_clip_source(name, entry, load, captions, video_id, group))
    return clips


def find_4dnex10m_clips(root: Path) -> list[ClipSource]:
    """Every clip under ``root/dynamic`` and ``root/static`` (module docstring), sorted by kind, group, id, name."""
    clips = []
    for kind in ("dynamic", "static"):
        for group in _folders(root / kind):
            captions = read_captions(root / "caption" / f"{group.name}{CAPTION_SUFFIX}")
            if not captions:
                logger.warning("No captions for %s/%s: caption/%s%s is missing or empty; its clips will fail.",
                               kind, group.name, group.name, CAPTION_SUFFIX)
            for video in _folders(group):
                clips += _video_clips(root, kind, group.name, video, captions)
    return clips
