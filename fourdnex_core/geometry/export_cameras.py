"""Recovered cameras as JSON: the project's own ``cameras.json`` and a Nerfstudio ``transforms.json``.

``cameras.json`` keeps the scene's OpenCV convention (camera x right, y down, z forward;
``cam2world`` maps camera coordinates to the scene frame, which is the first camera's)::

    {"convention": "opencv", "width": W, "height": H,
     "intrinsics": {"fx": .., "fy": .., "cx": .., "cy": .., "K": [[3 x 3]]},
     "frames": [{"index": 0, "cam2world": [[4 x 4]], "world2cam": [[4 x 4]]}, ...]}

When the frames have their own intrinsics (a zoom), each frame also holds its ``"intrinsics"``
(same keys) and the top-level ``"intrinsics"`` are the first frame's.

``cameras.json`` counts pixels as the scene does: the centre of pixel (column u, row v) is at
(u, v), so a centred principal point is ((W - 1) / 2, (H - 1) / 2).

``transforms.json`` follows Nerfstudio's documented convention (docs "Data conventions" and
``nerfstudio_dataparser``): ``fl_x, fl_y, cx, cy, w, h``, ``camera_model`` "OPENCV" (distortion
``k1 k2 p1 p2`` all 0), and per frame ``file_path``, ``transform_matrix`` (camera to world, 4 x 4)
and ``time`` (frame index / (F - 1), in [0, 1], as D-NeRF-style dynamic datasets store it;
0 for one frame); when the frames have their own intrinsics, each frame holds its ``fl_x, fl_y, cx,
cy`` and the top level none of them (Nerfstudio's parser takes a top-level value for every frame and
reads a frame's own only where the top level lacks that key); ``ply_file_path`` names the initial
points (a PLY in the scene's world frame, which is also the poses' world frame). Nerfstudio's camera axes are OpenGL's (x right,
y up, looking down -z), so ``transform_matrix = cam2world @ diag(1, -1, -1, 1)``: the camera's
y and z columns are negated; the world axes are left as they are (Nerfstudio re-orients and
re-centres poses itself when it loads them). Nerfstudio, like COLMAP and Rerun, puts the centre
of pixel (u, v) at (u + 0.5, v + 0.5) (its rays start at ``pixel + 0.5``), so ``cx`` and ``cy``
are the scene's plus 0.5 (:func:`corner_origin_K`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fourdnex_core.atomic_write import atomic_path

INTRINSIC_KEYS = ("fl_x", "fl_y", "cx", "cy")  # transforms.json's pinhole intrinsics
OPENGL_FROM_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])
PIXEL_CENTER = 0.5  # where COLMAP, Nerfstudio and Rerun put the centre of pixel 0 (the scene: at 0)


def corner_origin_K(K: np.ndarray, shift: float = PIXEL_CENTER) -> np.ndarray:
    """K [..., 3, 3] with the principal point moved by ``shift`` pixels: from the scene's pixel
    centres at integers to the half-integer centres of COLMAP, Nerfstudio and Rerun (``-shift``: back)."""
    K = np.array(K, dtype=np.float64)
    K[..., 0, 2] += shift
    K[..., 1, 2] += shift
    return K


@dataclasses.dataclass
class CameraSet:
    """Intrinsics and per-frame poses.

    K: [3, 3] pixels (shared) or [F, 3, 3] (one per frame); cams2world: [F, 4, 4] OpenCV
    convention; width, height: image size in pixels.
    """

    K: np.ndarray
    cams2world: np.ndarray
    width: int
    height: int

    def __post_init__(self) -> None:
        self.K = np.asarray(self.K, dtype=np.float64)
        self.cams2world = np.asarray(self.cams2world, dtype=np.float64)
        if self.cams2world.ndim != 3 or self.cams2world.shape[1:] != (4, 4):
            raise ValueError(f"CameraSet.cams2world must be [F, 4, 4], got {self.cams2world.shape}.")
        if self.K.shape not in ((3, 3), (len(self.cams2world), 3, 3)):
            raise ValueError(f"CameraSet.K must be [3, 3] or [{len(self.cams2world)}, 3, 3] (one per frame), got "
                             f"{self.K.shape}.")
        if not np.allclose(self.cams2world[:, 3], [0, 0, 0, 1]):
            raise ValueError("CameraSet.cams2world rows 4 must be [0, 0, 0, 1]: rigid 4 x 4 transforms expected.")
        if self.width < 1 or self.height < 1:
            raise ValueError(f"CameraSet image size must be positive, got {self.width} x {self.height}.")

    @property
    def num_frames(self) -> int:
        return self.cams2world.shape[0]

    @property
    def per_frame(self) -> bool:
        """Whether each frame has its own intrinsics."""
        return self.K.ndim == 3

    def frame_K(self, index: int) -> np.ndarray:
        """Intrinsics [3, 3] of frame ``index``."""
        return self.K[index] if self.per_frame else self.K


def _intrinsics_entry(K: np.ndarray) -> dict:
    return {"fx": K[0, 0], "fy": K[1, 1], "cx": K[0, 2], "cy": K[1, 2], "K": K.tolist()}


def _load_json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"No camera file at {path}; write one with `fourdnex export DIR --cameras`.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); re-export the cameras.") from error


def _field(path: Path, data: dict, key: str) -> object:
    if key not in data:
        raise ValueError(f"{path} has no {key!r} entry; it is not a camera file written by fourdnex export.")
    return data[key]


def write_cameras_json(path: str | Path, cameras: CameraSet) -> Path:
    """Write ``cameras`` in the ``cameras.json`` layout of the module docstring."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = [{"index": index, "cam2world": pose.tolist(), "world2cam": np.linalg.inv(pose).tolist()}
              for index, pose in enumerate(cameras.cams2world)]
    if cameras.per_frame:
        for index, frame in enumerate(frames):
            frame["intrinsics"] = _intrinsics_entry(cameras.frame_K(index))
    document = {
        "convention": "opencv",
        "description": "camera x right, y down, z forward; cam2world maps camera to scene (first camera's) frame",
        "width": cameras.width, "height": cameras.height,
        "intrinsics": _intrinsics_entry(cameras.frame_K(0)),
        "frames": frames,
    }
    return _write_json(path, document)


def read_cameras_json(path: str | Path) -> CameraSet:
    """Read a ``cameras.json`` written by :func:`write_cameras_json`."""
    path = Path(path)
    data = _load_json(path)
    if _field(path, data, "convention") != "opencv":
        raise ValueError(f"{path} uses convention {data['convention']!r}; only 'opencv' camera files are read.")
    intrinsics = _field(path, data, "intrinsics")
    frames = _field(path, data, "frames")
    try:
        poses = np.array([frame["cam2world"] for frame in frames], dtype=np.float64).reshape(len(frames), 4, 4)
        K = np.array(_field(path, intrinsics, "K"), dtype=np.float64)
        if any("intrinsics" in frame for frame in frames):
            K = np.array([frame["intrinsics"]["K"] for frame in frames], dtype=np.float64)
        return CameraSet(K, poses, int(data["width"]), int(data["height"]))
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path} holds malformed cameras ({error}); re-export them with fourdnex export.") from error


def write_transforms_json(path: str | Path, cameras: CameraSet, file_paths: Sequence[str],
                          ply_file_path: str | None = None) -> Path:
    """Write a Nerfstudio ``transforms.json``; ``file_paths`` are the frame images, relative to ``path``."""
    if len(file_paths) != cameras.num_frames:
        raise ValueError(f"Got {len(file_paths)} image paths for {cameras.num_frames} cameras; give one per frame.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    K = corner_origin_K(cameras.frame_K(0))
    last = max(cameras.num_frames - 1, 1)
    document: dict = {
        "camera_model": "OPENCV",
        "fl_x": K[0, 0], "fl_y": K[1, 1], "cx": K[0, 2], "cy": K[1, 2],
        "w": cameras.width, "h": cameras.height,
        "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0,
        "frames": [{"file_path": file_path, "transform_matrix": (pose @ OPENGL_FROM_OPENCV).tolist(),
                    "time": index / last}
                   for index, (file_path, pose) in enumerate(zip(file_paths, cameras.cams2world, strict=True))],
    }
    if cameras.per_frame:  # Nerfstudio reads a frame's own only where the top level has none of that key
        for key in INTRINSIC_KEYS:
            del document[key]
        for index, frame in enumerate(document["frames"]):
            own = corner_origin_K(cameras.frame_K(index))
            frame.update(zip(INTRINSIC_KEYS, (own[0, 0], own[1, 1], own[0, 2], own[1, 2]), strict=True))
    if ply_file_path is not None:
        document["ply_file_path"] = ply_file_path
    return _write_json(path, document)


def _write_json(path: Path, document: dict) -> Path:
    """Write ``document`` as indented JSON at ``path``, atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(document, indent=1), encoding="utf-8")
    return path


def read_transforms_json(path: str | Path) -> tuple[CameraSet, list[str]]:
    """Read a Nerfstudio ``transforms.json``: cameras back in OpenCV convention, and the image paths."""
    path = Path(path)
    data = _load_json(path)
    frames = _field(path, data, "frames")
    try:
        def matrix(entry: dict) -> list:
            return [[entry["fl_x"], 0.0, entry["cx"]], [0.0, entry["fl_y"], entry["cy"]], [0.0, 0.0, 1.0]]

        if any(key in frame for frame in frames for key in INTRINSIC_KEYS):  # as Nerfstudio: the top level wins
            K = np.array([matrix({**frame, **data}) for frame in frames])
        else:
            K = np.array(matrix(data))
        K = corner_origin_K(K, -PIXEL_CENTER)
        poses = np.array([frame["transform_matrix"] for frame in frames], dtype=np.float64).reshape(-1, 4, 4)
        cameras = CameraSet(K, poses @ OPENGL_FROM_OPENCV, int(data["w"]), int(data["h"]))
        return cameras, [str(frame["file_path"]) for frame in frames]
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path} is not a Nerfstudio transforms.json with pinhole intrinsics ({error}).") from error
