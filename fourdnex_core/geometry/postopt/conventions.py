"""Decoded XYZ pixel values to scene units, in the paper's or the release's convention."""

from __future__ import annotations

from typing import Literal

import torch

from fourdnex_core.representation import pixels_to_xyz

XYZConvention = Literal["paper", "release"]


def decoded_xyz_to_scene(decoded: torch.Tensor, convention: XYZConvention = "paper") -> torch.Tensor:
    """Map decoded XYZ pixel values to scene coordinates for post-optimization.

    decoded: [..., 3] the XYZ half of a decoded video, channels last, values about in [0, 1].

    - ``"paper"``: ``2 p - 1``, the inverse of the training encoding ``(xyz + 1) / 2``: scene
      units in [-1, 1], as in the training point maps.
    - ``"release"``: the authors' release shifts decoded x and y by -0.5 and keeps z:
      ``(p_x - 0.5, p_y - 0.5, p_z)``. This equals ``paper / 2 + (0, 0, 0.5)``, a similarity of
      the paper's coordinates, so post-optimization of either gives the same intrinsics and
      rotations; translations map as ``t / 2 + (0, 0, 0.5)`` and depth halves.

    Returns xyz: [..., 3] in scene units.
    """
    if decoded.shape[-1] != 3:
        raise ValueError(f"decoded XYZ must be [..., 3] (channels last), got {tuple(decoded.shape)}.")
    if convention == "paper":
        return pixels_to_xyz(decoded)
    if convention == "release":
        shift = torch.tensor([0.5, 0.5, 0.0], dtype=decoded.dtype, device=decoded.device)
        return decoded - shift
    raise ValueError(f"Unknown XYZ convention {convention!r}; use 'paper' or 'release'.")
