"""Training clips to the 4DNeX representation: frames, point maps in the first camera's frame, size.

Every function is pure and works on batched tensors. The order :func:`process_clip` applies
(METHOD.md, "XYZ values"):

1. pick ``num_frames`` frames (every ``frame_stride``-th), padding a short clip by reversal
   (ping-pong: 0 1 2 3 2 1 0 1 ...);
2. depth maps become point maps with their cameras; point maps given in world coordinates
   move into the first camera's frame (``inverse(cams2world[0])``);
3. resize to cover the training size and centre-crop, with the resize the generation uses
   (:func:`fourdnex_core.image_io.resize_frames`: RGB bicubic with antialiasing; XYZ and
   validity nearest, so no point is blended across a depth edge);
4. normalize the cropped point maps with :func:`fourdnex_core.representation.normalize_point_maps`:
   per frame clipped to the 2..98th percentile, per-frame centre, one scale for the clip.

Normalizing after the crop makes the values the model sees span [-1, 1].
"""

from __future__ import annotations

import dataclasses
import logging

import torch

from fourdnex_core.geometry.cameras import backproject
from fourdnex_core.image_io import resize_frames
from fourdnex_core.representation import PointMapNormalization, normalize_point_maps

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class RawClip:
    """One clip as read from disk, before any processing.

    rgb: [F, H, W, 3] float in [0, 1].
    xyz: [F, H, W, 3] point maps, or None when ``depth`` is given.
    depth: [F, H, W] camera-space depth (with ``intrinsics`` and ``cams2world``), or None.
    intrinsics: [3, 3] or [F, 3, 3] pixel intrinsics of the depth maps (OpenCV), or None.
    cams2world: [F, 4, 4] camera-to-world transforms, or None. With ``xyz`` it says the points
        are in world coordinates; without, they are taken to be in the first camera's frame.
    valid: [F, H, W] bool, or None (all finite points valid).
    """

    name: str
    caption: str
    rgb: torch.Tensor
    xyz: torch.Tensor | None = None
    depth: torch.Tensor | None = None
    intrinsics: torch.Tensor | None = None
    cams2world: torch.Tensor | None = None
    valid: torch.Tensor | None = None


@dataclasses.dataclass
class ProcessedClip:
    """A clip at the training size. rgb: [F, H, W, 3] in [0, 1]; xyz: [F, H, W, 3] in [-1, 1].

    normalization: what was removed from the (first-camera-frame) points; source_frames: frames
    the source had; padded: whether reversal padding was needed.
    """

    name: str
    caption: str
    rgb: torch.Tensor
    xyz: torch.Tensor
    normalization: PointMapNormalization
    source_frames: int
    padded: bool


def frame_indices(total: int, num_frames: int, stride: int = 1) -> list[int]:
    """Indices of ``num_frames`` frames taken every ``stride`` frames, padded by reversal.

    A clip with too few frames is extended ping-pong style, 0 1 2 1 0 1 2 ... (the turning
    frame is not repeated). A one-frame clip repeats its frame.
    """
    if total < 1:
        raise ValueError("The clip has no frames; remove it from the dataset.")
    if num_frames < 1 or stride < 1:
        raise ValueError(f"num_frames and stride must be >= 1, got {num_frames} and {stride}.")
    available = list(range(0, total, stride))
    if len(available) >= num_frames:
        return available[:num_frames]
    if len(available) == 1:
        return available * num_frames
    cycle = available + available[-2:0:-1]
    return [cycle[index % len(cycle)] for index in range(num_frames)]


def to_first_camera(points: torch.Tensor, cams2world: torch.Tensor) -> torch.Tensor:
    """World points [F, H, W, 3] -> the first camera's frame, with cams2world [F, 4, 4]."""
    if cams2world.ndim != 3 or cams2world.shape[-2:] != (4, 4):
        raise ValueError(f"cams2world must be [F, 4, 4], got {tuple(cams2world.shape)}.")
    world_to_first = torch.linalg.inv(cams2world[0].double())
    rotation, translation = world_to_first[:3, :3], world_to_first[:3, 3]
    moved = points.double() @ rotation.T + translation
    return moved.to(points.dtype)


def clip_points(clip: RawClip) -> torch.Tensor:
    """The clip's point maps [F, H, W, 3] in the first camera's frame (see :class:`RawClip`)."""
    if clip.xyz is not None:
        if clip.cams2world is None:
            return clip.xyz
        return to_first_camera(clip.xyz, clip.cams2world)
    if clip.depth is None:
        raise ValueError(f"Clip {clip.name} has neither point maps nor depth; give xyz.npy or depth.npy + cameras.")
    if clip.intrinsics is None or clip.cams2world is None:
        raise ValueError(f"Clip {clip.name}: depth maps need intrinsics and cams2world to become point maps; "
                         "add intrinsics.npy and cams2world.npy (or give xyz.npy instead).")
    world = backproject(clip.depth.double(), clip.intrinsics.double(), clip.cams2world.double())
    return to_first_camera(world, clip.cams2world).float()


def fit_frames(frames: torch.Tensor, height: int, width: int, *, mode: str) -> torch.Tensor:
    """Resize [F, H, W, C] to cover height x width (keeping aspect), centre-crop: -> [F, height, width, C].

    The generation's own resize (:func:`fourdnex_core.image_io.resize_frames`, "crop": a batch of
    clips shares one size).

    ``mode``: "bicubic" (with antialiasing, for RGB; clamped to [0, 1]) or "nearest" (point maps,
    masks: values are never blended).
    """
    if frames.ndim != 4:
        raise ValueError(f"Frames must be [F, H, W, C], got {tuple(frames.shape)}.")
    resized = resize_frames(frames.permute(0, 3, 1, 2), height, width, mode="crop", filter=mode)
    return resized.permute(0, 2, 3, 1).contiguous()


def process_clip(
    clip: RawClip,
    *,
    num_frames: int,
    height: int,
    width: int,
    frame_stride: int = 1,
    percentiles: tuple[float, float] = (2.0, 98.0),
) -> ProcessedClip:
    """Frames, first-camera point maps, training size and normalization (module docstring)."""
    total = clip.rgb.shape[0]
    _check_clip_shapes(clip)
    indices = frame_indices(total, num_frames, frame_stride)
    points = clip_points(clip)
    valid = torch.isfinite(points).all(dim=-1)
    if clip.valid is not None:
        valid &= clip.valid.bool()
    index = torch.tensor(indices)
    rgb = fit_frames(clip.rgb[index], height, width, mode="bicubic")
    xyz = fit_frames(torch.nan_to_num(points[index].float()), height, width, mode="nearest")
    valid = fit_frames(valid[index, ..., None].float(), height, width, mode="nearest")[..., 0] > 0.5
    empty = [frame for frame in range(num_frames) if not valid[frame].any()]
    if empty:
        raise ValueError(f"Clip {clip.name}: frame(s) {empty[:5]} have no valid 3D point after cropping; "
                         "check its point maps or validity masks, or drop the clip.")
    normalized, normalization = normalize_point_maps(xyz, valid, percentiles=tuple(percentiles))
    return ProcessedClip(
        name=clip.name, caption=clip.caption, rgb=rgb, xyz=normalized, normalization=normalization,
        source_frames=total, padded=len(range(0, total, frame_stride)) < num_frames,
    )


def _check_clip_shapes(clip: RawClip) -> None:
    if clip.rgb.ndim != 4 or clip.rgb.shape[-1] != 3:
        raise ValueError(f"Clip {clip.name}: RGB frames must be [F, H, W, 3], got {tuple(clip.rgb.shape)}.")
    frames, height, width, _ = clip.rgb.shape
    geometry = clip.xyz if clip.xyz is not None else clip.depth
    if geometry is not None and tuple(geometry.shape[:3]) != (frames, height, width):
        kind = "point maps" if clip.xyz is not None else "depth maps"
        raise ValueError(f"Clip {clip.name}: {kind} {tuple(geometry.shape[:3])} do not match the RGB frames "
                         f"{(frames, height, width)} (frames, height, width); resize them to the video or "
                         "re-export the clip.")
    if clip.cams2world is not None and tuple(clip.cams2world.shape) != (frames, 4, 4):
        raise ValueError(f"Clip {clip.name}: cams2world must be [{frames}, 4, 4] (one per frame), got "
                         f"{tuple(clip.cams2world.shape)}.")
