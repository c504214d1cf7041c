"""The in-node 4D viewer's point file (``web/``): a small binary file of per-frame point clouds.

Layout: ``4DNXPTS1``, uint32 header length, JSON header ``{"fps", "frames": [{"count", "offset"}],
"center", "radius"}`` padded to 4 bytes, then per frame float32 positions [N, 3] (OpenCV axes)
followed by uint8 RGB [N, 3] padded to 4 bytes. Offsets count from the data start. Its reader
is the viewer (``web/``); the tests read the file by this layout (``tests/format_readers.py``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fourdnex_core.atomic_write import atomic_path
from fourdnex_core.geometry.pointcloud import PointCloud

VIEWER_MAGIC = b"4DNXPTS1"


def write_viewer_points(path: str | Path, clouds: Sequence[PointCloud], fps: float) -> Path:
    """Write point clouds [N, 3] per frame as a viewer file (layout in the module docstring)."""
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
