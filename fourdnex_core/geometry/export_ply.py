"""Binary PLY point clouds: one file per frame, float32 x y z and uint8 red green blue.

Points keep the scene's axes (OpenCV: x right, y down, z forward). Written with ``plyfile``
(binary little-endian; the same header and properties as before the library took over:
``property float x/y/z``, ``property uchar red/green/blue``, so Blender, MeshLab, Open3D and
CloudCompare read it as a coloured point cloud). The project reads no PLY itself: the tests read
the files back with ``plyfile``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from plyfile import PlyData, PlyElement

from fourdnex_core.atomic_write import atomic_path
from fourdnex_core.geometry.pointcloud import PointCloud

VERTEX_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                         ("red", "u1"), ("green", "u1"), ("blue", "u1")])
COMMENT = "fourdnex_core point cloud, OpenCV axes (x right, y down, z forward)"


def write_vertices(path: str | Path, vertices: np.ndarray, comment: str) -> Path:
    """Write a structured array [N] (one field per PLY property) as the ``vertex`` element of a binary
    little-endian PLY at ``path``, atomically."""
    data = PlyData([PlyElement.describe(vertices, "vertex")], text=False, byte_order="<", comments=[comment])
    with atomic_path(path) as temporary:
        data.write(str(temporary))
    return Path(path)


def write_ply(path: str | Path, cloud: PointCloud) -> Path:
    """Write ``cloud`` (positions [N, 3], colours [N, 3] uint8) as a binary little-endian PLY at ``path``."""
    cloud.check_finite()
    vertices = np.empty(len(cloud), dtype=VERTEX_DTYPE)
    for axis, name in enumerate(("x", "y", "z")):
        vertices[name] = cloud.positions[:, axis]
    for axis, name in enumerate(("red", "green", "blue")):
        vertices[name] = cloud.colors[:, axis]
    return write_vertices(path, vertices, COMMENT)
