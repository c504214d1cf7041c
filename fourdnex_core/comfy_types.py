"""The values that flow between the ComfyUI nodes, and the small conversions the nodes need.

Nothing here imports ComfyUI: the node pack (``nodes/``) declares inputs and outputs and calls
these functions, so every conversion is testable on its own.

Value types (the ComfyUI type name in brackets):

* :class:`FourDNeXModel` [FOURDNEX_MODEL]: the patched Wan transformer with the LoRA applied.
* :class:`TextEncoder` [UMT5], :class:`ImageEncoder` [CLIP_VISION_4DNEX]: encoders + their
  tokenizer / processor.
* ComfyUI's own CONDITIONING (``[[embeds [1, T, D], {...}], ...]``) and CLIP_VISION_OUTPUT
  (an object with ``penultimate_hidden_states`` [1, 257, 1280]): :func:`conditioning` and
  :class:`ClipVisionOutput` produce them, :func:`text_embeds` and :func:`image_embeds` read them
  back, whichever node (ours or ComfyUI's core) made them.
* :class:`PointMaps` [POINTMAPS]: XYZ frames with their colours; :class:`Cameras` [CAMERAS].
* :class:`PointClouds` [POINTCLOUDS]: a :class:`~fourdnex_core.scene_file.Scene` plus the
  point filter and budget that turn each frame into a point cloud.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic_write import atomic_path
from .encoders import TEXT_LENGTH
from .geometry.export_cameras import CameraSet
from .geometry.pointcloud import PointCloud, PointFilter, ScenePointClouds, frame_depth
from .geometry.postopt import PostOptResult
from .geometry.trajectories import dolly, offset_path, orbit, point_ahead
from .lowvram import LowVramOptions
from .representation import xyz_to_pixels
from .scene_file import Scene

TRAJECTORIES = ("orbit", "dolly", "path", "path-offset")
VIEWER_MAGIC = b"4DNXPTS1"


@dataclasses.dataclass
class FourDNeXModel:
    """transformer: FourDNeXTransformer3DModel (LoRA applied); dtype: its compute dtype; memory: the
    :class:`~fourdnex_core.lowvram.LowVramOptions` applied to it (placement and step cache per run)."""

    transformer: torch.nn.Module
    dtype: torch.dtype
    lora: str | None = None
    lora_strength: float = 0.0
    memory: LowVramOptions = dataclasses.field(default_factory=LowVramOptions)


@dataclasses.dataclass
class TextEncoder:
    """UMT5 encoder and its tokenizer."""

    model: torch.nn.Module
    tokenizer: Any


@dataclasses.dataclass
class ImageEncoder:
    """CLIP vision encoder and its image processor."""

    model: torch.nn.Module
    processor: Any


@dataclasses.dataclass
class ClipVisionOutput:
    """What ComfyUI's CLIP_VISION_OUTPUT carries that Wan uses: ``penultimate_hidden_states``
    [B, 257, 1280]. Item access works too, as on ComfyUI's own output object."""

    penultimate_hidden_states: torch.Tensor

    def __getitem__(self, key: str) -> torch.Tensor:
        return getattr(self, key)


@dataclasses.dataclass
class PointMaps:
    """xyz: [F, H, W, 3] scene units; rgb: [F, H, W, 3] in [0, 1] or None; mask: [F, H, W] bool or None."""

    xyz: torch.Tensor
    rgb: torch.Tensor | None = None
    mask: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.xyz.ndim != 4 or self.xyz.shape[-1] != 3:
            raise ValueError(f"Point maps must be [F, H, W, 3], got {tuple(self.xyz.shape)}.")
        if self.rgb is not None and self.rgb.shape != self.xyz.shape:
            raise ValueError(f"rgb {tuple(self.rgb.shape)} must match xyz {tuple(self.xyz.shape)}.")

    @property
    def num_frames(self) -> int:
        return self.xyz.shape[0]


@dataclasses.dataclass
class Cameras:
    """Recovered cameras: K [3, 3], cams2world [F, 4, 4] (OpenCV), depth [F, H, W], residuals [F]."""

    K: torch.Tensor
    cams2world: torch.Tensor
    depth: torch.Tensor
    residuals: torch.Tensor

    @property
    def height(self) -> int:
        return self.depth.shape[1]

    @property
    def width(self) -> int:
        return self.depth.shape[2]

    def camera_set(self) -> CameraSet:
        return CameraSet(self.K.double().numpy(), self.cams2world.double().numpy(), self.width, self.height)


@dataclasses.dataclass
class PointClouds:
    """A scene and how its frames become point clouds (filter, per-frame budget, downsampling)."""

    scene: Scene
    point_filter: PointFilter = dataclasses.field(default_factory=PointFilter)
    max_points: int | None = None
    method: str = "stride"

    def clouds(self, max_points: int | None = None) -> ScenePointClouds:
        """Per-frame point clouds; ``max_points`` (if given) tightens the stored budget."""
        budget = self.max_points
        if max_points:
            budget = min(budget, max_points) if budget else max_points
        return ScenePointClouds(self.scene, self.point_filter, budget, self.method)


# ---------------------------------------------------------------- conditioning


def conditioning(embeds: torch.Tensor) -> list:
    """Embeddings [B, T, D] as ComfyUI CONDITIONING: ``[[embeds, {"pooled_output": None}]]``."""
    return [[embeds, {"pooled_output": None}]]


def text_embeds(cond: list, length: int = TEXT_LENGTH) -> torch.Tensor:
    """The [1, 512, D] text embeddings of a CONDITIONING, from our encoder or ComfyUI's.

    ComfyUI's UMT5 (a ``wan`` CLIPLoader) may return fewer than 512 tokens; Wan pads the context
    with zeros to 512, so the same is done here. Longer contexts are refused.
    """
    if not isinstance(cond, (list, tuple)) or not cond or not isinstance(cond[0], (list, tuple)):
        raise TypeError("Expected a CONDITIONING (a list of [embeddings, options] pairs); connect a text encode node.")
    if len(cond) > 1:
        raise ValueError(f"The conditioning holds {len(cond)} entries (combined or concatenated prompts); "
                         "4DNeX takes one prompt: connect a single text encode node.")
    embeds = cond[0][0]
    if embeds.ndim != 3 or embeds.shape[0] != 1:
        raise ValueError(f"Text embeddings must be [1, T, D], got {tuple(embeds.shape)}.")
    if embeds.shape[1] > length:
        raise ValueError(f"The prompt encodes to {embeds.shape[1]} tokens; Wan reads at most {length}. "
                         "Shorten the prompt.")
    return torch.nn.functional.pad(embeds, (0, 0, 0, length - embeds.shape[1]))


def image_embeds(clip_vision_output: Any) -> torch.Tensor:
    """The [1, 257, D] CLIP penultimate states of a CLIP_VISION_OUTPUT (ours or ComfyUI's)."""
    states = getattr(clip_vision_output, "penultimate_hidden_states", None)
    if states is None:
        raise TypeError("The CLIP vision output has no penultimate_hidden_states; encode the image with "
                        "4DNeX CLIP Vision Encode or ComfyUI's CLIPVisionEncode.")
    if states.ndim != 3:
        raise ValueError(f"CLIP penultimate states must be [B, tokens, D], got {tuple(states.shape)}.")
    return states[:1]


# ---------------------------------------------------------------- pictures


def xyz_image(xyz: torch.Tensor) -> torch.Tensor:
    """Point maps [F, H, W, 3] in scene units -> an IMAGE [F, H, W, 3]: (xyz + 1) / 2, clamped."""
    return xyz_to_pixels(xyz.float()).clamp(0.0, 1.0)


def depth_image(depth: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Depth [F, H, W] -> [F, H, W] in [0, 1], near bright, using inverse depth scaled over the clip.

    Pixels without a positive depth (or outside ``valid``) are 0.
    """
    usable = depth > 0
    if valid is not None:
        usable &= valid
    inverse = torch.where(usable, 1.0 / depth.clamp_min(1e-12), 0.0)
    if not usable.any():
        return torch.zeros_like(depth, dtype=torch.float32)
    low, high = inverse[usable].min(), inverse[usable].max()
    scaled = (inverse - low) / (high - low).clamp_min(1e-12)
    return torch.where(usable, scaled, 0.0).float().clamp(0.0, 1.0)


# ---------------------------------------------------------------- scenes


def point_maps_from_postopt(point_maps: PointMaps, result: PostOptResult) -> tuple[Cameras, PointMaps]:
    """Cameras and the registered point maps (``R K^-1 d [u, v, 1] + t``) of a post-optimization."""
    cameras = Cameras(K=result.K, cams2world=result.cams2world, depth=result.depth, residuals=result.residuals)
    registered = PointMaps(xyz=result.points, rgb=point_maps.rgb, mask=result.valid)
    return cameras, registered


def scene_from(point_maps: PointMaps, cameras: Cameras | None = None) -> Scene:
    """A :class:`Scene` (the ``scene.npz`` content) from point maps and, optionally, cameras."""
    if point_maps.rgb is None:
        raise ValueError("These point maps carry no colours (an XYZ init?); use the point maps of a decoded video.")
    rgb = (point_maps.rgb.float().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    mask = point_maps.mask.numpy() if point_maps.mask is not None else None
    if cameras is None:
        return Scene(rgb=rgb, xyz=point_maps.xyz.float().numpy(), mask=mask)
    if tuple(cameras.depth.shape) != tuple(point_maps.xyz.shape[:3]):
        raise ValueError(f"The cameras belong to frames of {tuple(cameras.depth.shape)}, the point maps are "
                         f"{tuple(point_maps.xyz.shape[:3])}; connect the cameras of these point maps.")
    return Scene(rgb=rgb, xyz=point_maps.xyz.float().numpy(), depth=cameras.depth.float().numpy(),
                 K=cameras.K.float().numpy(), cams2world=cameras.cams2world.float().numpy(), mask=mask,
                 residuals=cameras.residuals.float().numpy())


def point_maps_from_scene(scene: Scene) -> tuple[PointMaps, Cameras | None]:
    """The point maps of a loaded scene (its raw XYZ) and its cameras when post-optimization ran."""
    points = scene.point_mask()
    mask = torch.from_numpy(points) if points is not None else None
    maps = PointMaps(xyz=torch.from_numpy(scene.xyz).float(), rgb=torch.from_numpy(scene.rgb).float() / 255.0,
                     mask=mask)
    if scene.K is None or scene.cams2world is None or scene.depth is None:
        return maps, None
    residuals = scene.residuals if scene.residuals is not None else np.zeros(scene.num_frames, np.float32)
    cameras = Cameras(K=torch.from_numpy(scene.K), cams2world=torch.from_numpy(scene.cams2world),
                      depth=torch.from_numpy(scene.depth), residuals=torch.from_numpy(residuals))
    return maps, cameras


def median_depth(scene: Scene) -> float:
    """Median positive depth of the first frame (scene units): the unit of trajectory distances."""
    depth = frame_depth(scene, 0)
    valid = depth[np.isfinite(depth) & (depth > 0)] if depth is not None else np.zeros(0)
    if valid.size == 0:
        raise ValueError("The first frame has no point in front of its camera; run 4DNeX Post-Optimize first.")
    return float(np.median(valid))


def trajectory(scene: Scene, kind: str, num_views: int, arc_degrees: float = 30.0, distance: float = 0.3,
               offset: Sequence[float] = (0.1, 0.0, 0.0)) -> torch.Tensor:
    """cams2world [N, 4, 4] of a novel-view trajectory (as ``fourdnex render``; distances in median depths).

    kind: ``orbit`` around the point the first camera looks at, ``dolly`` along its axis, ``path``
    (the recovered cameras) or ``path-offset`` (them shifted by ``offset`` in camera axes).
    """
    if scene.K is None or scene.cams2world is None:
        raise ValueError("The scene has no cameras; run 4DNeX Post-Optimize on the point maps first.")
    recovered = torch.from_numpy(scene.cams2world).double()
    if kind == "path":
        return recovered
    unit = median_depth(scene)
    if kind == "orbit":
        return orbit(recovered[0], point_ahead(recovered[0], unit), num_views, arc_degrees)
    if kind == "dolly":
        return dolly(recovered[0], num_views, distance * unit)
    if kind == "path-offset":
        return offset_path(recovered, torch.tensor(list(offset), dtype=recovered.dtype) * unit)
    raise ValueError(f"Unknown trajectory {kind!r}; use one of {', '.join(TRAJECTORIES)}.")


# ---------------------------------------------------------------- files


def safe_output_folder(output_dir: str | Path, filename_prefix: str) -> tuple[Path, str]:
    """(folder, base name) of a ComfyUI ``filename_prefix`` such as ``"4dnex/scene"`` under ``output_dir``.

    A prefix that is absolute, uses ``..`` or otherwise leaves ``output_dir`` is refused.
    """
    prefix = filename_prefix.strip().replace("\\", "/")
    if not prefix or prefix.endswith("/"):
        raise ValueError(f"filename_prefix {filename_prefix!r} names no file; use e.g. '4dnex/scene'.")
    if prefix.startswith("/") or re.match(r"^[A-Za-z]:", prefix) or ".." in prefix.split("/"):
        raise ValueError(f"filename_prefix {filename_prefix!r} leaves the output folder; use a relative name "
                         "such as '4dnex/scene' (no '..', no absolute path).")
    root = Path(output_dir).resolve()
    folder = (root / prefix).parent.resolve()
    if folder != root and root not in folder.parents:
        raise ValueError(f"filename_prefix {filename_prefix!r} leaves the output folder {root}.")
    return folder, Path(prefix).name


def next_counter(folder: Path, base: str) -> int:
    """The next free counter for ``base_NNNNN_*`` names in ``folder`` (ComfyUI's numbering)."""
    pattern = re.compile(rf"^{re.escape(base)}_(\d{{5}})_")
    used = [int(m.group(1)) for p in folder.glob(f"{glob_escape(base)}_*") if (m := pattern.match(p.name))]
    return max(used, default=0) + 1


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def write_viewer_points(path: str | Path, clouds: Sequence[PointCloud], fps: float) -> Path:
    """Write point clouds for the in-node viewer (``web/``): a small binary file.

    Layout: ``4DNXPTS1``, uint32 header length, JSON header ``{"fps", "frames": [{"count",
    "offset"}], "center", "radius"}`` padded to 4 bytes, then per frame float32 positions [N, 3]
    (OpenCV axes) followed by uint8 RGB [N, 3] padded to 4 bytes. Offsets count from the data start.
    """
    frames, chunks, offset = [], [], 0
    low, high = np.full(3, np.inf), np.full(3, -np.inf)
    for cloud in clouds:
        positions = np.ascontiguousarray(cloud.positions, dtype="<f4")
        colors = np.ascontiguousarray(cloud.colors, dtype=np.uint8).tobytes()
        colors += b"\0" * (-len(colors) % 4)
        frames.append({"count": len(cloud), "offset": offset})
        chunks += [positions.tobytes(), colors]
        offset += positions.nbytes + len(colors)
        if len(cloud):
            low, high = np.minimum(low, positions.min(0)), np.maximum(high, positions.max(0))
    if not np.isfinite(low).all():
        low, high = np.zeros(3), np.zeros(3)
    center = (low + high) / 2
    header = json.dumps({"fps": fps, "frames": frames, "center": center.tolist(),
                         "radius": float(np.linalg.norm(high - low) / 2) or 1.0}).encode()
    header += b" " * (-(len(VIEWER_MAGIC) + 4 + len(header)) % 4)
    path = Path(path)
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        handle.write(VIEWER_MAGIC + np.uint32(len(header)).tobytes() + header)
        for chunk in chunks:
            handle.write(chunk)
    return path


def read_viewer_points(path: str | Path) -> tuple[dict, list[PointCloud]]:
    """Read a file of :func:`write_viewer_points` (for tests and tools)."""
    raw = Path(path).read_bytes()
    if raw[:8] != VIEWER_MAGIC:
        raise ValueError(f"{path} is not a 4DNeX viewer file.")
    length = int(np.frombuffer(raw[8:12], "<u4")[0])
    header = json.loads(raw[12:12 + length])
    data = memoryview(raw)[12 + length:]
    clouds = []
    for frame in header["frames"]:
        count, start = frame["count"], frame["offset"]
        positions = np.frombuffer(data[start:start + 12 * count], "<f4").reshape(count, 3)
        colors = np.frombuffer(data[start + 12 * count:start + 15 * count], np.uint8).reshape(count, 3)
        clouds.append(PointCloud(positions.copy(), colors.copy()))
    return header, clouds


def preview_cameras(scene: Scene, focal_factor: float = 1.2) -> tuple[torch.Tensor, torch.Tensor]:
    """(K [3, 3], cams2world [F, 4, 4]) to show a scene from: its recovered cameras, or, without
    post-optimization, the same camera for every frame: ``fx = fy = focal_factor * W``, looking
    down +z at the first frame's points from far enough back to see them all."""
    height, width = scene.rgb.shape[1:3]
    if scene.K is not None and scene.cams2world is not None:
        return torch.from_numpy(scene.K).double(), torch.from_numpy(scene.cams2world).double()
    points = scene.xyz[0].reshape(-1, 3)
    points = points[np.isfinite(points).all(axis=1)]
    low, high = (points.min(0), points.max(0)) if len(points) else (np.zeros(3), np.zeros(3))
    center = (low + high) / 2
    focal = focal_factor * width
    half_extent = max(high[0] - low[0], high[1] - low[1], 1e-6) / 2
    back = half_extent * focal / (min(width, height) / 2)
    K = torch.tensor([[focal, 0, (width - 1) / 2], [0, focal, (height - 1) / 2], [0, 0, 1]], dtype=torch.float64)
    pose = torch.eye(4, dtype=torch.float64)
    pose[:3, 3] = torch.tensor([center[0], center[1], low[2] - back])
    return K, pose.expand(scene.num_frames, 4, 4).clone()
