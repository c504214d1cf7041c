"""Recovered cameras and depth against a known truth (a synthetic scene's), as four numbers.

:func:`truth_scene` turns a :class:`~fourdnex_core.geometry.synthetic.SyntheticScene` into a
``Scene`` holding its true depth, intrinsics and cameras (what ``truth.npz`` of ``fourdnex demo``
holds); :func:`camera_errors` compares a post-optimized ``Scene`` with it.
:data:`TESTED_ACCURACY` is what post-optimization is tested to reach on a synthetic scene with 1 %
depth noise and 5 % outliers (``tests/test_postopt.py``: within one degree and two percent), and
:data:`SHOWCASE_SCENE` the synthetic scene the demo and the ComfyUI node make at that corruption.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from fourdnex_core.geometry.cameras import rotation_angle_degrees
from fourdnex_core.geometry.synthetic import SyntheticScene
from fourdnex_core.scene_file import Scene


@dataclasses.dataclass(frozen=True)
class CameraErrors:
    """How far recovered cameras and depth are from the truth.

    rotation_degrees: the largest camera rotation error over the frames, in degrees.
    position: the largest camera-centre distance over the frames, as a share of the truth's
        median depth in the first frame (0.01 = 1 % of the scene's depth).
    focal: the largest relative fx or fy error over the frames.
    depth: the median relative depth error over the pixels post-optimization used.
    """

    rotation_degrees: float
    position: float
    focal: float
    depth: float

    def within(self, bounds: CameraErrors) -> bool:
        """True when every error is at most its bound (and none is NaN)."""
        return all(getattr(self, field.name) <= getattr(bounds, field.name) for field in dataclasses.fields(self))

    def describe(self, bounds: CameraErrors | None = None) -> str:
        """One line, with each finite bound in brackets."""
        def bound(name: str, scale: float, unit: str) -> str:
            value = getattr(bounds, name) if bounds is not None else math.inf
            return f" (tested: < {value * scale:g}{unit})" if math.isfinite(value) else ""

        return (f"rotation {self.rotation_degrees:.3f} deg{bound('rotation_degrees', 1, ' deg')}, "
                f"focal {100 * self.focal:.2f} %{bound('focal', 100, ' %')}, "
                f"depth {100 * self.depth:.2f} % median{bound('depth', 100, ' %')}, "
                f"camera positions {100 * self.position:.2f} % of the scene depth{bound('position', 100, ' %')}")


# tests/test_postopt.py::test_noise_and_outliers_stay_within_one_degree_and_two_percent (positions untested)
TESTED_ACCURACY = CameraErrors(rotation_degrees=1.0, position=math.inf, focal=0.02, depth=0.02)

# The synthetic scene ``fourdnex demo`` and the synthetic-scene node make by default: a moving
# camera and moving objects, with the depth noise and outliers TESTED_ACCURACY holds at.
SHOWCASE_SCENE = dict(num_frames=25, height=96, width=144, noise=0.01, outlier_fraction=0.05, seed=0)


def truth_scene(synthetic: SyntheticScene) -> Scene:
    """The scene file of ``synthetic``'s truth: its colours, uncorrupted points, true depth, K
    ([3, 3], or [F, 3, 3] when it zooms) and cameras."""
    intrinsics = synthetic.intrinsics
    K = synthetic.K if bool((intrinsics == intrinsics[:1]).all()) else intrinsics
    observed = synthetic.to_scene_file()
    return dataclasses.replace(observed, xyz=synthetic.clean_xyz().float().numpy(),
                               depth=synthetic.depth.float().numpy(), K=K.float().numpy(),
                               cams2world=synthetic.cams2world.float().numpy())


def camera_errors(truth: Scene, recovered: Scene) -> CameraErrors:
    """``recovered``'s cameras and depth (a post-optimized scene) against ``truth``'s; both in the
    first camera's frame and the truth's units, as post-optimization of the truth's points gives."""
    for name, scene in (("truth", truth), ("recovered", recovered)):
        if scene.K is None or scene.cams2world is None or scene.depth is None:
            raise ValueError(f"The {name} scene has no cameras or depth; post-optimize it first.")
    if recovered.depth.shape != truth.depth.shape:
        raise ValueError(f"The scenes differ in size: {recovered.depth.shape} and {truth.depth.shape}.")
    true_poses = torch.from_numpy(truth.cams2world).double()
    poses = torch.from_numpy(recovered.cams2world).double()
    rotation = rotation_angle_degrees(poses[:, :3, :3], true_poses[:, :3, :3])
    true_depth = truth.depth.astype(np.float64)
    scale = float(np.median(true_depth[0][np.isfinite(true_depth[0]) & (true_depth[0] > 0)]))
    position = (poses[:, :3, 3] - true_poses[:, :3, 3]).norm(dim=-1) / scale
    focal = max(abs(float(recovered.frame_K(i)[axis, axis]) / float(truth.frame_K(i)[axis, axis]) - 1)
                for i in range(truth.num_frames) for axis in (0, 1))
    used = np.isfinite(recovered.depth) & (true_depth > 0)
    if recovered.valid is not None:
        used &= recovered.valid
    depth = np.abs(recovered.depth[used] - true_depth[used]) / true_depth[used]
    return CameraErrors(rotation_degrees=float(rotation.max()), position=float(position.max()), focal=focal,
                        depth=float(np.median(depth)) if depth.size else math.nan)
