"""Camera keyframes picked in the in-node 4D viewer (``web/fourdnex_viewer.js``), as JSON text.

The viewer's "add view" stores the camera it shows; the text travels in the workflow as a widget
value (ComfyUI saves it in the workflow JSON) and looks like::

    {"convention": "opencv-cam2world",
     "keyframes": [{"cam2world": [[r00, r01, r02, tx], [...], [...], [0, 0, 0, 1]],
                    "fov_y_degrees": 50.0, "aspect": 1.5, "frame": 0}, ...]}

Convention: ``cam2world`` is a camera-to-world matrix in the scene's own axes, the OpenCV ones of
every ``cams2world`` in this package (camera x right, y down, z forward; the same world the point
clouds are in). The viewer draws with three.js, whose camera looks down -z with y up, and shows
the points with y and z negated (``F = diag(1, -1, -1)``); a three.js ``camera.matrixWorld`` M is
therefore stored as ``F M F`` (entry ``[i][j]`` times ``s_i s_j``, ``s = (1, -1, -1, 1)``), which is
the same camera in the scene's axes. ``fov_y_degrees`` is three.js' vertical field of view; a
rendered view keeps it (its focal is ``(H / 2) / tan(fov_y / 2)`` pixels, square pixels, centred
principal point), so the view's vertical extent matches the viewer's whatever the output's
aspect. ``aspect`` (viewer width / height) and ``frame`` (the scene frame shown) are recorded for
reference only.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import torch

from fourdnex_core.geometry.trajectories import interpolate_keyframes

KEYFRAME_TRAJECTORIES = ("viewer-path", "viewer-view")
CONVENTION = "opencv-cam2world"
_FIX = ("Press 'clear views' in the in-node 4D viewer and 'add view' again, or write "
        '{"keyframes": [{"cam2world": <4x4 camera-to-world, OpenCV axes>, "fov_y_degrees": 50}]}.')


@dataclass(frozen=True)
class CameraKeyframes:
    """Keyframes in the scene's axes. cams2world: [K, 4, 4] float64; fov_y_degrees: [K] float64."""

    cams2world: torch.Tensor
    fov_y_degrees: torch.Tensor

    def __len__(self) -> int:
        return self.cams2world.shape[0]

    @property
    def focal_heights(self) -> torch.Tensor:
        """Focal length in image heights, ``0.5 / tan(fov_y / 2)``: [K] (what a path interpolates)."""
        return 0.5 / torch.tan(torch.deg2rad(self.fov_y_degrees) / 2)


def intrinsics(focal_heights: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """K [N, 3, 3] of a ``height`` x ``width`` image for focal lengths [N] in image heights
    (:attr:`CameraKeyframes.focal_heights`): ``fx = fy = focal * height``, the principal point at the
    image centre."""
    focal = focal_heights.double() * height
    K = torch.zeros(focal_heights.shape[0], 3, 3, dtype=torch.float64)
    K[:, 0, 0], K[:, 1, 1] = focal, focal
    K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = (width - 1) / 2, (height - 1) / 2, 1.0
    return K


def _error(problem: str) -> ValueError:
    return ValueError(f"Camera keyframes: {problem}. {_FIX}")


def _rotation_error(matrix: torch.Tensor) -> float:
    rotation = matrix[:3, :3]
    return float((rotation.T @ rotation - torch.eye(3, dtype=rotation.dtype)).abs().max())


def _keyframe(index: int, entry: object) -> tuple[torch.Tensor, float]:
    if not isinstance(entry, dict) or "cam2world" not in entry:
        raise _error(f"keyframe {index} is not an object with a 'cam2world' matrix")
    try:
        matrix = torch.tensor(entry["cam2world"], dtype=torch.float64)
        fov = float(entry.get("fov_y_degrees", 50.0))
    except (TypeError, ValueError) as error:
        raise _error(f"keyframe {index} has a cam2world or fov_y_degrees that is not numbers ({error})") from None
    if matrix.shape != (4, 4):
        raise _error(f"keyframe {index}'s cam2world must be 4 rows of 4 numbers, got shape {tuple(matrix.shape)}")
    if not torch.isfinite(matrix).all():
        raise _error(f"keyframe {index}'s cam2world holds NaN or infinite numbers")
    if _rotation_error(matrix) > 1e-3 or float(torch.det(matrix[:3, :3])) <= 0 or \
            not torch.allclose(matrix[3], torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)):
        raise _error(f"keyframe {index}'s cam2world is not a rigid camera pose (rotation + translation, "
                     "last row 0 0 0 1)")
    if not 0.0 < fov < 180.0 or not math.isfinite(fov):
        raise _error(f"keyframe {index}'s fov_y_degrees must be between 0 and 180, got {fov}")
    return matrix, fov


def parse_keyframes(text: str) -> CameraKeyframes | None:
    """Read the viewer's keyframe text (format in the module docstring); ``None`` when there are
    none (empty text, or an empty list). Raises ``ValueError`` naming the problem and the fix."""
    if not text or not text.strip():
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise _error(f"the text is not JSON ({error})") from None
    if not isinstance(data, dict) or not isinstance(data.get("keyframes"), list):
        raise _error("the text must be an object with a 'keyframes' list")
    convention = data.get("convention", CONVENTION)
    if convention != CONVENTION:
        raise _error(f"unknown convention {convention!r}; only {CONVENTION!r} is read")
    if not data["keyframes"]:
        return None
    poses, fovs = zip(*(_keyframe(index, entry) for index, entry in enumerate(data["keyframes"])))
    return CameraKeyframes(torch.stack(poses), torch.tensor(fovs, dtype=torch.float64))


def keyframes_json(cams2world: torch.Tensor, fov_y_degrees: torch.Tensor) -> str:
    """The text :func:`parse_keyframes` reads, for keyframes cams2world [K, 4, 4] and fov [K]
    (what the viewer writes; for tests and scripts)."""
    keyframes = [{"cam2world": pose.tolist(), "fov_y_degrees": float(fov)}
                 for pose, fov in zip(cams2world.double(), fov_y_degrees.double())]
    return json.dumps({"convention": CONVENTION, "keyframes": keyframes})


def keyframe_trajectory(keyframes: CameraKeyframes | None, kind: str, num_views: int, height: int,
                        width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(cams2world [N, 4, 4], K [N, 3, 3] for ``height`` x ``width`` images) along the viewer's keyframes.

    kind: ``viewer-path`` goes through every keyframe (:func:`interpolate_keyframes`), ``viewer-view``
    stays at the first one for all ``num_views`` views.
    """
    if kind not in KEYFRAME_TRAJECTORIES:
        raise ValueError(f"Unknown keyframe trajectory {kind!r}; use one of {', '.join(KEYFRAME_TRAJECTORIES)}.")
    if keyframes is None:
        raise ValueError(f"The {kind} trajectory needs camera keyframes: press 'add view' in the in-node 4D "
                         "viewer, pass its camera path (camera_path) to the render, and run again.")
    poses, focal = keyframes.cams2world, keyframes.focal_heights
    if kind == "viewer-view":
        poses, focal = poses[:1], focal[:1]
    poses, focal = interpolate_keyframes(poses, focal, num_views)
    return poses, intrinsics(focal, height, width)
