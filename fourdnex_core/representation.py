"""The 6D video: RGB and XYZ (point map) videos fused side by side along the width.

A 4D scene is a pair of pixel-aligned videos of the same size; 4DNeX puts RGB on the left and
XYZ on the right of one wide video, so a frame of W pixels becomes 2W. This module holds every
transform of that representation, in pixel space and in latent space:

* :func:`fuse_width` / :func:`split_width`: the side-by-side layout;
* :func:`xyz_init_map`: the sloped-plane XYZ guess for the first frame (paper eq. 6);
* :func:`xyz_to_pixels` / :func:`pixels_to_xyz`: XYZ as video pixels and back (:func:`xyz_image`:
  clamped, to look at);
* :func:`normalize_point_maps` / :func:`denormalize_point_maps`: point maps to [-1, 1] and back,
  keeping centre and scale so known units can be restored;
* :func:`normalize_xyz_latent` / :func:`denormalize_xyz_latent`: the fixed XYZ latent statistics
  (mu -0.13, sigma 1.70), applied to the XYZ half only;
* :func:`condition_video` and :func:`condition_mask`: the image-to-video condition;
  :func:`condition_frames`, :func:`generation_mask` and :func:`denormalize_xyz_raw_latent`: the
  same in the conventions of ComfyUI's native Wan model (IMAGE frames in [0, 1], a mask where
  1 = generate, latents before Wan's per-channel normalization).

Conventions: pixel-space videos here are [F, H, W, C] (ComfyUI IMAGE layout) or [B, C, F, H, W]
(diffusers video layout); latents are [B, C, F, H, W]. The width axis is always an argument.
"""

from __future__ import annotations

import dataclasses

import torch

XYZ_LATENT_MEAN = -0.13
XYZ_LATENT_STD = 1.70
# Wan's VAE: 4x in time, 8x in space; the DiT patchifies 1x2x2, so each modality's side must be
# a multiple of 16 pixels.
TEMPORAL_COMPRESSION = 4
SPATIAL_COMPRESSION = 8
SIDE_MULTIPLE = 16
MASK_XYZ_FIRST_FRAME = 0.5


def _frame_count_problem(num_frames: int) -> str | None:
    if num_frames >= 1 and (num_frames - 1) % TEMPORAL_COMPRESSION == 0:
        return None
    lower = max(1, (num_frames - 1) // TEMPORAL_COMPRESSION * TEMPORAL_COMPRESSION + 1)
    return (f"num_frames must be 4k+1 (1, 5, ..., 45, 49, ...), got {num_frames}; "
            f"use {lower} or {lower + TEMPORAL_COMPRESSION}")


def _side_problem(name: str, side: int) -> str | None:
    if side >= SIDE_MULTIPLE and side % SIDE_MULTIPLE == 0:
        return None
    lower = max(SIDE_MULTIPLE, side // SIDE_MULTIPLE * SIDE_MULTIPLE)
    return f"{name} must be a positive multiple of {SIDE_MULTIPLE}, got {side}; use {lower} or {lower + SIDE_MULTIPLE}"


def check_video_size(num_frames: int, height: int, width: int) -> None:
    """Raise a ValueError naming the nearest valid values if the size cannot be generated.

    ``height`` and ``width`` are per modality (480 x 720 by default: the fused video is 2x wider).
    """
    problems = [_frame_count_problem(num_frames), _side_problem("height", height), _side_problem("width", width)]
    problems = [problem for problem in problems if problem]
    if problems:
        raise ValueError("Impossible video size: " + "; ".join(problems) + ".")


def latent_frames(num_frames: int) -> int:
    """Latent frames for ``num_frames`` video frames (49 -> 13); a count that is not 4k+1 is an error."""
    problem = _frame_count_problem(num_frames)
    if problem:
        raise ValueError(f"Impossible video length: {problem}.")
    return (num_frames - 1) // TEMPORAL_COMPRESSION + 1


def fuse_width(rgb: torch.Tensor, xyz: torch.Tensor, width_dim: int = -1) -> torch.Tensor:
    """Put ``rgb`` left of ``xyz`` along ``width_dim``: [..., W] + [..., W] -> [..., 2W].

    Works for pixels ([F, H, W, 3] with ``width_dim=-2``) and latents ([B, C, F, H, W]).
    """
    if rgb.shape != xyz.shape:
        raise ValueError(
            f"RGB {tuple(rgb.shape)} and XYZ {tuple(xyz.shape)} must have the same shape to be fused; "
            "resize the point maps to the image size first."
        )
    return torch.cat([rgb, xyz], dim=width_dim)


def split_width(wide: torch.Tensor, width_dim: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`fuse_width`: [..., 2W] -> (rgb [..., W], xyz [..., W])."""
    width = wide.shape[width_dim]
    if width % 2:
        raise ValueError(
            f"A width-fused tensor has an even width (RGB | XYZ), got {width} along dim {width_dim}: "
            "this is not a 4DNeX wide video or latent."
        )
    rgb, xyz = wide.split(width // 2, dim=width_dim)
    return rgb, xyz


def xyz_init_map(height: int, width: int, *, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """The sloped-plane XYZ guess for the first frame (paper eq. 6), [H, W, 3] in [-1, 1].

    With row i (0 at the top) and column j: x = 2j/(W-1) - 1, y = 2i/(H-1) - 1,
    z = 1 - 2i/(H-1): far at the top of the image, near at the bottom.
    """
    if height < 2 or width < 2:
        raise ValueError(f"The XYZ init map needs at least 2 x 2 pixels, got {height} x {width}.")
    rows = torch.linspace(-1.0, 1.0, height, dtype=dtype, device=device)
    cols = torch.linspace(-1.0, 1.0, width, dtype=dtype, device=device)
    y, x = torch.meshgrid(rows, cols, indexing="ij")
    return torch.stack([x, y, -y], dim=-1)


def xyz_to_pixels(xyz: torch.Tensor) -> torch.Tensor:
    """Scene units in [-1, 1] -> video pixels in [0, 1]: (xyz + 1) / 2 (how XYZ is written as video)."""
    return (xyz + 1.0) / 2.0


def xyz_image(xyz: torch.Tensor) -> torch.Tensor:
    """Point maps [F, H, W, 3] in scene units -> a picture [F, H, W, 3] in [0, 1]: (xyz + 1) / 2, clamped."""
    return xyz_to_pixels(xyz.float()).clamp(0.0, 1.0)


def pixels_to_xyz(pixels: torch.Tensor) -> torch.Tensor:
    """Decoded XYZ video pixels in [0, 1] -> scene units: 2p - 1."""
    return pixels * 2.0 - 1.0


@dataclasses.dataclass
class PointMapNormalization:
    """What :func:`normalize_point_maps` removed: xyz = normalized * scale + center.

    center: [F, 3] per-frame centre ((min + max) / 2 of the clipped points); scale: one scalar
    for the whole clip (largest half-extent over frames and axes).
    """

    center: torch.Tensor
    scale: float


def normalize_point_maps(
    xyz: torch.Tensor,
    valid: torch.Tensor | None = None,
    *,
    percentiles: tuple[float, float] = (2.0, 98.0),
) -> tuple[torch.Tensor, PointMapNormalization]:
    """Point maps in scene units -> [-1, 1], as the 4DNeX training data (METHOD.md).

    Each frame is clipped per axis to its ``percentiles`` (2nd..98th), centred on
    (min + max) / 2 of the clipped values, and the whole clip is divided by one scale: the
    largest half-extent over frames and axes.

    Args:
        xyz: [F, H, W, 3] points in the first camera's frame.
        valid: optional [F, H, W] bool; invalid (and non-finite) points are left out of the
            statistics and set to 0 in the output.
    Returns:
        (normalized [F, H, W, 3] in [-1, 1], the :class:`PointMapNormalization` to undo it).
    """
    if xyz.ndim != 4 or xyz.shape[-1] != 3:
        raise ValueError(f"Point maps must be [F, H, W, 3], got {tuple(xyz.shape)}.")
    finite = torch.isfinite(xyz).all(dim=-1)
    valid = finite if valid is None else valid & finite
    frames = xyz.shape[0]
    low_q, high_q = percentiles[0] / 100.0, percentiles[1] / 100.0
    lows, highs = [], []
    for frame in range(frames):
        points = xyz[frame][valid[frame]].float()  # [N, 3]
        if points.shape[0] == 0:
            raise ValueError(f"Frame {frame} has no valid points to normalize; check the validity mask.")
        lows.append(torch.quantile(points, low_q, dim=0))
        highs.append(torch.quantile(points, high_q, dim=0))
    low, high = torch.stack(lows), torch.stack(highs)  # [F, 3]
    center = (low + high) / 2.0
    scale = float(((high - low) / 2.0).max().clamp_min(1e-8))
    clipped = torch.maximum(torch.minimum(xyz.float(), high[:, None, None]), low[:, None, None])
    normalized = (clipped - center[:, None, None]) / scale
    normalized = torch.where(valid[..., None], normalized, torch.zeros_like(normalized))
    return normalized.to(xyz.dtype), PointMapNormalization(center=center, scale=scale)


def denormalize_point_maps(normalized: torch.Tensor, params: PointMapNormalization) -> torch.Tensor:
    """Undo :func:`normalize_point_maps` (up to the clipping): [F, H, W, 3] -> scene units."""
    if normalized.shape[0] != params.center.shape[0]:
        raise ValueError(
            f"{normalized.shape[0]} frames of point maps but {params.center.shape[0]} frame centres."
        )
    center = params.center.to(normalized.device, normalized.dtype)
    return normalized * params.scale + center[:, None, None]


def normalize_xyz_latent(wide_latent: torch.Tensor) -> torch.Tensor:
    """Apply (x - mu) / sigma to the XYZ (right) half of a wide latent [B, C, F, H, 2W].

    The input is already normalized with Wan's per-channel latent mean/std; the RGB half is
    returned unchanged.
    """
    rgb, xyz = split_width(wide_latent)
    return fuse_width(rgb, (xyz - XYZ_LATENT_MEAN) / XYZ_LATENT_STD)


def denormalize_xyz_latent(wide_latent: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`normalize_xyz_latent`: x * sigma + mu on the XYZ half only."""
    rgb, xyz = split_width(wide_latent)
    return fuse_width(rgb, xyz * XYZ_LATENT_STD + XYZ_LATENT_MEAN)


def condition_video(image: torch.Tensor, xyz_init: torch.Tensor, num_frames: int) -> torch.Tensor:
    """The image-to-video condition: the fused first frame, then zero frames.

    Args:
        image: [3, H, W] RGB in [-1, 1] (the VAE's input range).
        xyz_init: [3, H, W] XYZ guess in scene units [-1, 1] (see :func:`xyz_init_map`).
        num_frames: video frames F (4k+1).
    Returns:
        [1, 3, F, H, 2W] video in [-1, 1], ready for the VAE encoder.
    """
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"The condition image must be [3, H, W], got {tuple(image.shape)}.")
    check_video_size(num_frames, image.shape[1], image.shape[2])
    first = fuse_width(image, xyz_init.to(image))  # [3, H, 2W]
    video = first.new_zeros(3, num_frames, *first.shape[1:])
    video[:, 0] = first
    return video.unsqueeze(0)


def condition_mask(
    num_frames: int,
    latent_height: int,
    latent_width: int,
    *,
    xyz_first_frame: float = MASK_XYZ_FIRST_FRAME,
    dtype: torch.dtype = torch.float32,
    device=None,
) -> torch.Tensor:
    """The Wan I2V mask for a wide latent, with a soft XYZ first frame.

    1 marks known content, 0 content to generate. The first frame is 1 on the RGB half and
    ``xyz_first_frame`` (0.5: the init is only a guess) on the XYZ half; later frames are 0. As
    in Wan I2V the first frame's mask is repeated 4x in time and folded into 4 channels.

    Args:
        num_frames: video frames F (4k+1); latent_height, latent_width: of the WIDE latent.
    Returns:
        [1, 4, F_latent, h, w] mask.
    """
    if latent_width % 2:
        raise ValueError(f"The wide latent width must be even (RGB | XYZ), got {latent_width}.")
    frames = latent_frames(num_frames)
    per_frame = torch.zeros(num_frames + TEMPORAL_COMPRESSION - 1, latent_height, latent_width, dtype=dtype, device=device)
    per_frame[:TEMPORAL_COMPRESSION, :, : latent_width // 2] = 1.0
    per_frame[:TEMPORAL_COMPRESSION, :, latent_width // 2:] = xyz_first_frame
    folded = per_frame.view(frames, TEMPORAL_COMPRESSION, latent_height, latent_width)
    return folded.transpose(0, 1).unsqueeze(0)


def condition_frames(image: torch.Tensor, xyz_init: torch.Tensor, num_frames: int) -> torch.Tensor:
    """:func:`condition_video` as frames for an image VAE interface: [F, H, 2W, 3] in [0, 1].

    Args:
        image: [H, W, 3] RGB in [0, 1]; xyz_init: [H, W, 3] in scene units [-1, 1].
    Returns:
        The fused first frame (image | (xyz + 1) / 2) followed by ``num_frames - 1`` frames of 0.5
        (the zero frames of the [-1, 1] video).
    """
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"The condition image must be [H, W, 3], got {tuple(image.shape)}.")
    if xyz_init.shape != image.shape:
        raise ValueError(f"The XYZ init {tuple(xyz_init.shape)} must match the image {tuple(image.shape)}; "
                         "make it at the same width and height.")
    video = condition_video(image.permute(2, 0, 1) * 2.0 - 1.0, xyz_init.permute(2, 0, 1), num_frames)
    return (video[0].permute(1, 2, 3, 0) + 1.0) / 2.0


def generation_mask(num_frames: int, latent_height: int, latent_width: int, **kwargs) -> torch.Tensor:
    """``1 - condition_mask(...)``: [1, 4, F_latent, h, w] with 1 = generate (0.5 on the XYZ first frame).

    The convention of ComfyUI's ``concat_mask``, which its Wan I2V model flips back with ``1 - mask``.
    """
    return 1.0 - condition_mask(num_frames, latent_height, latent_width, **kwargs)


def denormalize_xyz_raw_latent(raw: torch.Tensor, latents_mean: torch.Tensor, latents_std: torch.Tensor) -> torch.Tensor:
    """:func:`denormalize_xyz_latent` for a latent in the VAE's own (un-normalized) space.

    The 4DNeX statistics apply after Wan's per-channel normalization, so the wide latent
    [B, 16, F, H, 2W] is normalized ((z - mean) / std), de-normalized on its XYZ half, and brought
    back (z_hat * std + mean). ``latents_mean`` / ``latents_std``: [16] (Wan's, see
    :func:`fourdnex_core.vae_io.wan_latent_stats`).
    """
    shape = (1, -1, 1, 1, 1)
    mean = latents_mean.to(raw.device, torch.float32).view(shape)
    std = latents_std.to(raw.device, torch.float32).view(shape)
    normalized = (raw.float() - mean) / std
    return denormalize_xyz_latent(normalized) * std + mean
