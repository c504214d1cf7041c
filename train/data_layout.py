"""Finding and reading training clips in the two supported folder layouts.

**simple** (one folder per clip, any folder name)::

    root/<clip>/
        rgb.mp4 | rgb/*.png|*.jpg   RGB frames
        xyz.npy                     [F, H, W, 3] float point maps
          or depth.npy + intrinsics.npy   [F, H, W] depth, [3, 3] or [F, 3, 3] (OpenCV pixels)
        cams2world.npy              optional [F, 4, 4] camera-to-world; with xyz.npy it marks the
                                    points as world coordinates (required with depth.npy)
        valid.npy                   optional [F, H, W] bool
        confidence.npy              optional [F, H, W] confidence (curation only)
        caption.txt                 the prompt

**4dnex10m** (the 4DNeX-10M release: MonST3R / MegaSaM style annotations)::

    root/caption/<group>.csv                 columns ``number`` (video id), ``caption``
    root/raw/<group>/<video_id>.mp4          the source video
    root/<group>/<video_id>/clip_<start>-<end>/
        frame_XXXX.npy                       [H, W] depth per frame
        conf_XXXX.npy                        optional [H, W] confidence (curation only)
        pred_traj.txt                        per frame: time tx ty tz qw qx qy qz (camera-to-world)
        pred_intrinsics.txt                  per frame a 3x3 intrinsics matrix (9 numbers)

``<group>`` is any folder other than ``caption`` and ``raw`` (``static``, ``dynamic1``, ...).
The clip uses source frames ``start`` to ``end``; the RGB frames are resized to the depth maps'
size (the annotations were computed at that size).

Each layout yields :class:`ClipSource` objects: a name, a caption and a ``load()`` that reads the
arrays only when called, so a bad clip fails alone.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import re
from collections.abc import Callable
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import torch

from train.pointmaps import RawClip

logger = logging.getLogger(__name__)

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
_CLIP_DIR = re.compile(r"^clip_(\d+)-(\d+)$")
_RESERVED_10M = ("caption", "raw")


@dataclasses.dataclass(frozen=True)
class ClipSource:
    """A clip found on disk. ``load()`` reads it as a :class:`RawClip`; ``confidence()`` its
    confidence maps [F, H, W] (None when the clip has none)."""

    name: str
    path: Path
    load: Callable[[], RawClip]
    confidence: Callable[[], torch.Tensor | None]


def read_video(path: Path, frame_ids: list[int] | None = None) -> torch.Tensor:
    """Frames of a video file, or of a folder of images (sorted by name), as [F, H, W, 3] float in [0, 1].

    ``frame_ids``: which frames (None: all).
    """
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"{path} holds no {'/'.join(_IMAGE_SUFFIXES)} frames.")
        chosen = files if frame_ids is None else [files[i] for i in frame_ids if i < len(files)]
        frames = [np.asarray(imageio.imread(p))[..., :3] for p in chosen]
    else:
        wanted = None if frame_ids is None else set(frame_ids)
        frames_by_id = {}
        with imageio.get_reader(path) as reader:
            for index, frame in enumerate(reader):
                if wanted is None or index in wanted:
                    frames_by_id[index] = np.asarray(frame)[..., :3]
                if wanted is not None and index >= max(wanted):
                    break
        order = sorted(frames_by_id) if frame_ids is None else [i for i in frame_ids if i in frames_by_id]
        frames = [frames_by_id[i] for i in order]
    if frame_ids is not None and len(frames) != len(frame_ids):
        raise ValueError(f"{path} has only {len(frames)} of the {len(frame_ids)} frames the annotations need "
                         f"(frames {frame_ids[0]}..{frame_ids[-1]}); the video and its annotations disagree.")
    if not frames:
        raise ValueError(f"{path} holds no frames.")
    return torch.from_numpy(np.stack(frames)).float() / 255.0


def _load_array(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.load(path, allow_pickle=False))


def _optional_array(path: Path) -> torch.Tensor | None:
    return _load_array(path) if path.is_file() else None


def _simple_rgb_path(folder: Path) -> Path:
    for candidate in (folder / "rgb.mp4", folder / "rgb"):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{folder} has no rgb.mp4 and no rgb/ frame folder.")


def _load_simple(folder: Path) -> RawClip:
    caption_file = folder / "caption.txt"
    if not caption_file.is_file():
        raise FileNotFoundError(f"{folder} has no caption.txt; write the clip's prompt into it.")
    xyz = _optional_array(folder / "xyz.npy")
    depth = _optional_array(folder / "depth.npy")
    if xyz is None and depth is None:
        raise FileNotFoundError(f"{folder} has neither xyz.npy nor depth.npy; add the point maps [F, H, W, 3].")
    return RawClip(
        name=folder.name,
        caption=caption_file.read_text(encoding="utf-8").strip(),
        rgb=read_video(_simple_rgb_path(folder)),
        xyz=None if xyz is None else xyz.float(),
        depth=None if depth is None else depth.float(),
        intrinsics=_optional_array(folder / "intrinsics.npy"),
        cams2world=_optional_array(folder / "cams2world.npy"),
        valid=_optional_array(folder / "valid.npy"),
    )


def find_simple_clips(root: Path) -> list[ClipSource]:
    """Every sub-folder of ``root`` (not hidden) is a clip, sorted by name; bad ones fail on ``load()``."""
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    return [
        ClipSource(name=folder.name, path=folder, load=lambda folder=folder: _load_simple(folder),
                   confidence=lambda folder=folder: _optional_array(folder / "confidence.npy"))
        for folder in folders
    ]


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


def read_captions(path: Path) -> dict[str, str]:
    """A caption CSV (columns ``number``, ``caption``) as {video id zero-padded to 8 digits: caption}."""
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    if rows and not {"number", "caption"} <= set(rows[0]):
        raise ValueError(f"{path}: a caption CSV needs the columns 'number' and 'caption', has {sorted(rows[0])}.")
    return {row["number"].strip().zfill(8): row["caption"].strip() for row in rows if row["number"].strip()}


def _load_10m(clip_dir: Path, video: Path, caption: str, name: str) -> RawClip:
    match = _CLIP_DIR.match(clip_dir.name)
    depth_files = sorted(clip_dir.glob("frame_*.npy"))
    if not depth_files:
        raise FileNotFoundError(f"{clip_dir} has no frame_XXXX.npy depth maps.")
    cams2world = read_trajectory(clip_dir / "pred_traj.txt")
    intrinsics = torch.from_numpy(np.loadtxt(clip_dir / "pred_intrinsics.txt", dtype=np.float64)).reshape(-1, 3, 3)
    count = min(len(depth_files), cams2world.shape[0], intrinsics.shape[0])
    depth = torch.stack([_load_array(p).float() for p in depth_files[:count]])
    start = int(match.group(1))
    rgb = read_video(video, list(range(start, start + count)))
    rgb = _resize_rgb_to(rgb, depth.shape[1:], name)
    return RawClip(name=name, caption=caption, rgb=rgb, depth=depth, intrinsics=intrinsics[:count].float(),
                   cams2world=cams2world[:count].float())


def _resize_rgb_to(rgb: torch.Tensor, size: tuple[int, int], name: str) -> torch.Tensor:
    """RGB [F, H, W, 3] resized to the annotation size (warns when the aspect ratios differ)."""
    if tuple(rgb.shape[1:3]) == tuple(size):
        return rgb
    source_aspect, target_aspect = rgb.shape[2] / rgb.shape[1], size[1] / size[0]
    if abs(source_aspect / target_aspect - 1) > 0.02:
        logger.warning("Clip %s: video %dx%d and depth %dx%d differ in aspect ratio; the video is stretched.",
                       name, rgb.shape[2], rgb.shape[1], size[1], size[0])
    resized = torch.nn.functional.interpolate(rgb.permute(0, 3, 1, 2), size=tuple(size), mode="bicubic",
                                              antialias=True, align_corners=False)
    return resized.clamp(0.0, 1.0).permute(0, 2, 3, 1).contiguous()


def _confidence_10m(clip_dir: Path) -> torch.Tensor | None:
    files = sorted(clip_dir.glob("conf_*.npy"))
    return torch.stack([_load_array(p).float() for p in files]) if files else None


def find_4dnex10m_clips(root: Path) -> list[ClipSource]:
    """Every ``<group>/<video_id>/clip_<start>-<end>`` folder of a 4DNeX-10M tree (sorted)."""
    clips = []
    groups = sorted(p for p in root.iterdir() if p.is_dir() and p.name not in _RESERVED_10M)
    for group in groups:
        captions = read_captions(root / "caption" / f"{group.name}.csv")
        for clip_dir in sorted(group.glob("*/clip_*")):
            if not clip_dir.is_dir() or not _CLIP_DIR.match(clip_dir.name):
                continue
            video_id = clip_dir.parent.name
            name = f"{group.name}_{video_id}_{clip_dir.name}"
            video = root / "raw" / group.name / f"{video_id}.mp4"
            caption = captions.get(video_id.zfill(8), "")
            clips.append(ClipSource(
                name=name, path=clip_dir,
                load=lambda d=clip_dir, v=video, c=caption, n=name: _load_10m_checked(d, v, c, n),
                confidence=lambda d=clip_dir: _confidence_10m(d),
            ))
    return clips


def _load_10m_checked(clip_dir: Path, video: Path, caption: str, name: str) -> RawClip:
    if not video.is_file():
        raise FileNotFoundError(f"No source video {video} for clip {clip_dir}; put the raw videos under raw/<group>/.")
    if not caption:
        raise ValueError(f"No caption for video {clip_dir.parent.name} in caption/{clip_dir.parent.parent.name}.csv.")
    return _load_10m(clip_dir, video, caption, name)


def find_clips(root: str | Path, layout: str) -> list[ClipSource]:
    """The clips under ``root`` in ``layout`` ("simple" or "4dnex10m"; see the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Dataset folder {root} does not exist; set [data] root to the clips' folder.")
    finders = {"simple": find_simple_clips, "4dnex10m": find_4dnex10m_clips}
    if layout not in finders:
        raise ValueError(f"Unknown layout {layout!r}; use one of {', '.join(finders)}.")
    clips = finders[layout](root)
    if not clips:
        raise ValueError(f"No clips found under {root} in the {layout!r} layout; see train/README.md for the layout.")
    names = [clip.name for clip in clips]
    if len(set(names)) != len(names):
        raise ValueError(f"Clip names under {root} are not unique; rename the folders.")
    return clips
