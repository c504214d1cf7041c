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

**4dnex10m**: the 4DNeX-10M release as the authors' loader reads it; see
:mod:`fourdnex_train.layout_4dnex10m`.

Each layout yields :class:`ClipSource` objects: a name, a caption and a ``load()`` that reads the
arrays only when called, so a bad clip fails alone.
"""

from __future__ import annotations

from pathlib import Path

from fourdnex_train.clip_source import ClipSource, load_array, optional_array, read_video
from fourdnex_train.layout_4dnex10m import find_4dnex10m_clips
from fourdnex_train.pointmaps import RawClip

__all__ = ["ClipSource", "find_clips", "find_simple_clips", "read_video"]


def _simple_rgb_path(folder: Path) -> Path:
    for candidate in (folder / "rgb.mp4", folder / "rgb"):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{folder} has no rgb.mp4 and no rgb/ frame folder.")


def _load_simple(folder: Path) -> RawClip:
    caption_file = folder / "caption.txt"
    if not caption_file.is_file():
        raise FileNotFoundError(f"{folder} has no caption.txt; write the clip's prompt into it.")
    xyz = optional_array(folder / "xyz.npy")
    depth = optional_array(folder / "depth.npy")
    if xyz is None and depth is None:
        raise FileNotFoundError(f"{folder} has neither xyz.npy nor depth.npy; add the point maps [F, H, W, 3].")
    return RawClip(
        name=folder.name,
        caption=caption_file.read_text(encoding="utf-8").strip(),
        rgb=read_video(_simple_rgb_path(folder)),
        xyz=None if xyz is None else xyz.float(),
        depth=None if depth is None else depth.float(),
        intrinsics=optional_array(folder / "intrinsics.npy"),
        cams2world=optional_array(folder / "cams2world.npy"),
        valid=optional_array(folder / "valid.npy"),
    )


def find_simple_clips(root: Path) -> list[ClipSource]:
    """Every sub-folder of ``root`` (not hidden) is a clip, sorted by name; bad ones fail on ``load()``."""
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    return [
        ClipSource(name=folder.name, path=folder, load=lambda folder=folder: _load_simple(folder),
                   confidence=lambda folder=folder: optional_array(folder / "confidence.npy"))
        for folder in folders
    ]


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
        raise ValueError(f"No clips found under {root} in the {layout!r} layout; "
                         "see fourdnex_train/README.md for the layout.")
    names = [clip.name for clip in clips]
    if len(set(names)) != len(names):
        raise ValueError(f"Clip names under {root} are not unique; rename the folders.")
    return clips
