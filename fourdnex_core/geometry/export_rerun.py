"""A Rerun recording (``.rrd``) of the scene: points, cameras, RGB and depth on a frame timeline.

Written with the Rerun SDK (``rerun-sdk``, the ``rerun`` extra; API of 0.41) to a file sink: no
viewer is spawned and nothing goes over the network. Open it with ``rerun points.rrd``.
Entities, all in the scene's axes (OpenCV: x right, y down, z forward; declared once as
``ViewCoordinates.RDF`` on ``world``)::

    world                        static: ViewCoordinates RDF
    world/points                 per frame: Points3D (positions, uint8 RGB colours)
    world/camera                 per frame: Transform3D (cam2world rotation and translation) and
                                 Pinhole (K with the principal point + 0.5, Rerun's pixel centres;
                                 resolution W x H; camera_xyz RDF)
    world/camera/rgb             per frame: Image (RGB, uint8)
    world/camera/depth           per frame: DepthImage (float32, meter = 1 scene unit; 0 = no depth)

The timeline is ``frame`` (sequence 0 .. F-1). Cameras and depth are logged only when the scene
has them (after post-optimization). Read back with ``rerun.chunk.RrdReader`` (the tests do).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import numpy as np

from fourdnex_core.atomic_write import atomic_path
from fourdnex_core.geometry.export_cameras import CameraSet, corner_origin_K
from fourdnex_core.geometry.pointcloud import PointCloud
from fourdnex_core.optional import require

APPLICATION_ID = "fourdnex"
TIMELINE = "frame"


def check_available() -> None:
    """Raise a clear error, before any work, when the Rerun SDK is missing or not 0.41.x."""
    require("rerun", "Rerun export needs the Rerun SDK", "rerun-sdk==0.41.0", "rerun",
            minor_version=("rerun-sdk", (0, 41)))


class RerunWriter:
    """Write a recording frame by frame (layout in the module docstring); the file appears, whole, on
    :meth:`close` (an error inside a ``with`` block leaves no file).

    >>> with RerunWriter("points.rrd", cameras) as writer:
    ...     for index, cloud in enumerate(clouds):
    ...         writer.add_frame(index, cloud, rgb[index], depth[index])
    """

    def __init__(self, path: str | Path, cameras: CameraSet | None = None, recording_id: str | None = None) -> None:
        check_available()
        import rerun as rr

        self._rr = rr
        self.path = Path(path)
        self.cameras = cameras
        self._stack = contextlib.ExitStack()
        temporary = self._stack.enter_context(atomic_path(self.path, suffix=".rrd"))
        self._recording = rr.RecordingStream(APPLICATION_ID, recording_id=recording_id)
        self._recording.save(temporary)
        self._recording.log("world", rr.ViewCoordinates.RDF, static=True)

    def add_frame(self, index: int, cloud: PointCloud, rgb: np.ndarray, depth: np.ndarray | None = None) -> None:
        """Log frame ``index``: cloud (OpenCV axes), rgb [H, W, 3] uint8, depth [H, W] or None
        (non-finite depth is written as 0, "no depth")."""
        rr, recording = self._rr, self._recording
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"Rerun export needs an RGB frame [H, W, 3] uint8, got {rgb.shape} {rgb.dtype}.")
        if depth is not None and np.shape(depth) != rgb.shape[:2]:
            raise ValueError(f"depth must be [H, W] = {rgb.shape[:2]}, got {np.shape(depth)}.")
        recording.set_time(TIMELINE, sequence=index)
        recording.log("world/points", rr.Points3D(cloud.positions, colors=cloud.colors))
        if self.cameras is not None:
            pose = self.cameras.cams2world[index]
            recording.log("world/camera", rr.Transform3D(translation=pose[:3, 3], mat3x3=pose[:3, :3]))
            recording.log("world/camera", rr.Pinhole(image_from_camera=corner_origin_K(self.cameras.frame_K(index)),
                                                     resolution=[self.cameras.width, self.cameras.height],
                                                     camera_xyz=rr.ViewCoordinates.RDF))
        recording.log("world/camera/rgb", rr.Image(rgb))
        if depth is not None:
            finite = np.nan_to_num(np.asarray(depth, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
            recording.log("world/camera/depth", rr.DepthImage(finite, meter=1.0))

    def close(self, error: BaseException | None = None) -> Path:
        """Flush and close the file; rename it onto ``path`` unless ``error`` (then it is removed)."""
        self._recording.flush()
        self._recording.disconnect()
        if error is None:
            self._stack.close()
        else:
            self._stack.__exit__(type(error), error, error.__traceback__)
        return self.path

    def __enter__(self) -> RerunWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close(error)


def write_rerun(path: str | Path, clouds: Sequence[PointCloud], rgb: np.ndarray, cameras: CameraSet | None = None,
                depth: np.ndarray | None = None, recording_id: str | None = None) -> Path:
    """Write a recording of F frames to ``path``: clouds (F, read one at a time), rgb [F, H, W, 3]
    uint8, cameras (F) or None, depth [F, H, W] or None."""
    if len(clouds) != len(rgb) or (depth is not None and len(depth) != len(rgb)) or \
            (cameras is not None and cameras.num_frames != len(rgb)):
        raise ValueError(f"Rerun export needs as many point clouds ({len(clouds)}), cameras and depth maps as "
                         f"RGB frames ({len(rgb)}).")
    with RerunWriter(path, cameras, recording_id) as writer:
        for index, cloud in enumerate(clouds):
            writer.add_frame(index, cloud, rgb[index], None if depth is None else depth[index])
    return writer.path
