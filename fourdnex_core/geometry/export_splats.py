"""Gaussian-splat PLY per frame in the standard 3D Gaussian Splatting (INRIA) layout.

One splat per point of a :class:`~fourdnex_core.geometry.pointcloud.PointCloud`, in the scene's
axes (OpenCV, like the point PLYs, the cameras and the COLMAP model). The ``vertex`` element
holds float32 properties in this order::

    x y z  nx ny nz  f_dc_0 f_dc_1 f_dc_2  [f_rest_0 .. f_rest_44]  opacity  scale_0 scale_1 scale_2
    rot_0 rot_1 rot_2 rot_3

with the values stored as the format expects them *before* activation:

* ``f_dc_*``: the degree-0 spherical-harmonic colour, ``(rgb - 0.5) / C0`` with rgb in [0, 1] and
  ``C0 = 0.28209479177387814`` (a viewer shows ``0.5 + C0 * f_dc``);
* ``opacity``: the logit of the opacity (a viewer applies a sigmoid);
* ``scale_*``: the natural log of the Gaussian's standard deviation along each axis (a viewer
  applies exp); isotropic here: ``sqrt(mean squared distance to the 3 nearest other points)``,
  the rule the original implementation uses to initialise splats from a point cloud (its floor too:
  a mean squared distance of at least 1e-7, for duplicate points);
* ``rot_*``: a unit quaternion, w first (identity here: isotropic splats need no rotation);
* ``nx ny nz``: zeros (the original writes them, nothing reads them).

Conventions checked against the loader of the original implementation,
graphdeco-inria/gaussian-splatting ``scene/gaussian_model.py`` ``GaussianModel.load_ply`` (commit
1152adc9): it reads x y z, opacity, f_dc_0..2, every ``f_rest_*`` sorted by index, ``scale_*`` and
``rot*``, and applies sigmoid, exp and (normalised) w-first quaternions at render time; its
``save_ply`` writes the order above. That loader asserts ``3 * (sh_degree + 1) ** 2 - 3``
``f_rest_*`` properties: ``sh_degree=0`` (the default, no ``f_rest_*``, a quarter of the size)
suits viewers that take the SH degree from the properties present (SuperSplat / PlayCanvas);
``sh_degree=3`` adds the 45 ``f_rest_*`` (zero: no view-dependent colour) that the original
trainer and viewer expect at their default ``--sh_degree 3``.

Neighbours come from SciPy's k-d tree (``scipy.spatial.cKDTree``; the ``splats`` extra; ComfyUI
ships SciPy), queried on every core: 0.58 s for a 200 000-point frame on the 2-core development
machine (BENCHMARKS.md, "Exports in every format").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fourdnex_core.geometry.export_ply import write_vertices
from fourdnex_core.geometry.pointcloud import PointCloud
from fourdnex_core.optional import require

SH_C0 = 0.28209479177387814
SH_DEGREES = (0, 3)
NEIGHBORS = 3
SINGLE_POINT_SCALE = 1e-3
MIN_SPACING = 1e-7 ** 0.5  # the original clamps the mean squared distance at 1e-7 (log scale >= -8.06)
COMMENT = "fourdnex_core Gaussian splats (3DGS layout), OpenCV axes (x right, y down, z forward)"


def check_available() -> None:
    """Raise a clear error, before any work, when SciPy (the k-d tree) is missing."""
    require("scipy", "Gaussian-splat export needs SciPy for the point spacing", "scipy", "splats")


def splat_properties(sh_degree: int = 0) -> list[str]:
    """The vertex property names, in file order, for ``sh_degree`` 0 or 3."""
    if sh_degree not in SH_DEGREES:
        raise ValueError(f"sh_degree must be one of {SH_DEGREES}, got {sh_degree}.")
    rest = 3 * (sh_degree + 1) ** 2 - 3
    return (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
            + [f"f_rest_{index}" for index in range(rest)]
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


def point_spacing(positions: np.ndarray, neighbors: int = NEIGHBORS) -> np.ndarray:
    """sqrt of the mean squared distance from each point to its ``neighbors`` nearest other points.

    positions: [N, 3] -> [N] float64, at least ``MIN_SPACING`` (duplicates); a lone point gets
    ``SINGLE_POINT_SCALE``; fewer than ``neighbors`` others: all of them.
    """
    from scipy.spatial import cKDTree

    count = len(positions)
    if count < 2:
        return np.full(count, SINGLE_POINT_SCALE)
    k = min(neighbors, count - 1) + 1  # the nearest is the point itself
    distances, _ = cKDTree(positions).query(positions, k=k, workers=-1)
    spacing = np.sqrt(np.mean(np.square(distances[:, 1:]), axis=1))
    return np.maximum(spacing, MIN_SPACING)


def splat_vertices(cloud: PointCloud, opacity: float = 0.95, sh_degree: int = 0) -> np.ndarray:
    """The 3DGS vertex records [N] (float32 fields of :func:`splat_properties`) of ``cloud``."""
    if not 0.0 < opacity < 1.0:
        raise ValueError(f"opacity must be in (0, 1) (it is stored as a logit), got {opacity}.")
    names = splat_properties(sh_degree)
    vertices = np.zeros(len(cloud), dtype=[(name, "<f4") for name in names])
    for axis, name in enumerate(("x", "y", "z")):
        vertices[name] = cloud.positions[:, axis]
    dc = (cloud.colors.astype(np.float64) / 255.0 - 0.5) / SH_C0
    for channel in range(3):
        vertices[f"f_dc_{channel}"] = dc[:, channel]
    vertices["opacity"] = np.log(opacity / (1.0 - opacity))
    log_scale = np.log(point_spacing(cloud.positions))
    for axis in range(3):
        vertices[f"scale_{axis}"] = log_scale
    vertices["rot_0"] = 1.0
    return vertices


def write_splats(path: str | Path, cloud: PointCloud, opacity: float = 0.95, sh_degree: int = 0) -> Path:
    """Write ``cloud`` as a 3DGS PLY at ``path`` (layout in the module docstring), atomically."""
    cloud.check_finite()
    return write_vertices(path, splat_vertices(cloud, opacity, sh_degree), COMMENT)
