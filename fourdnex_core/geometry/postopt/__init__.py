"""Post-optimization (paper eq. 9-10): cameras, intrinsics and depth from generated XYZ frames.

Each pixel ``(u, v)`` of frame ``f`` is seen along the ray ``R_f K^-1 (d [u, v, 1]) + t_f``; the
generated point ``X`` should lie on it. We minimise the (robust) sum of squared 3D distances
between every valid XYZ point and its back-projected pixel over the intrinsics ``K``, the
camera-to-world poses ``(R_f, t_f)`` and the depths ``d``.

For fixed cameras the best depth is closed form: the projection of the camera-space point
``Y = R_f^T (X - t_f)`` onto the ray ``r = K^-1 [u, v, 1]``, ``d = (r . Y) / (r . r)``, and the
remaining error ``Y - d r`` is the point's distance to the ray. So depth is eliminated
(variable projection) and the solver works on cameras and intrinsics only:

1. per frame, a linear camera (DLT) from a random sample of pixel-to-point pairs (only the
   sampled points are read), reweighted a few times against outliers, decomposed into
   ``K, R, t``; the intrinsics are then tied together as asked (shared, principal point at the
   centre, or a known focal) and the poses re-solved linearly for those intrinsics;
2. Levenberg-Marquardt on the exact point-to-ray objective, batched over frames, with
   iteratively reweighted robust (Cauchy or Huber) weights scaled per frame by the median
   distance; shared intrinsics are solved through a Schur complement. Unless the caller fixes
   them, a fitted principal point and a focal per frame (a zoom) are then tried and kept where
   the data supports them (:mod:`.models`);
3. depth and per-pixel distances for every pixel in closed form, in one frame-by-frame pass
   (registered points on first use).

Conventions: OpenCV cameras (x right, y down, z forward), pixel centres at integer
coordinates, depth = camera-space z; see :mod:`fourdnex_core.geometry.cameras`. XYZ must be in
scene units, see :func:`decoded_xyz_to_scene`. The world frame is the XYZ frame; no camera is
assumed to be the identity. Non-finite points are masked out and counted, never used. A float
confidence map, where given, multiplies each point's weight in every step (confidence weighting);
zero or NaN confidence masks the point out (the rule: :mod:`fourdnex_core.geometry.confidence`).

Modules, one job each: :mod:`.inputs` (checks of the inputs and options, usable pixels),
:mod:`.sampling` (the random sample and the normalisation), :mod:`.problem` (the sampled
problem, the unknowns, the rays), :mod:`.robust` (robust weights and costs),
:mod:`.linear_start` (step 1), :mod:`.refine` (step 2), :mod:`.models` (the camera model the
data supports), :mod:`.result` (step 3), :mod:`.solve` (:func:`post_optimize`, all steps),
:mod:`.conventions` (decoded XYZ to scene units). The release-style Adam solver, for comparison
only, is ``benchmarks/postopt_reference.py``.
"""

from fourdnex_core.geometry.confidence import mask_keeps
from fourdnex_core.geometry.postopt.conventions import XYZConvention, decoded_xyz_to_scene
from fourdnex_core.geometry.postopt.inputs import MIN_POINTS_PER_FRAME, usable_points
from fourdnex_core.geometry.postopt.models import CameraModel
from fourdnex_core.geometry.postopt.problem import RobustLoss
from fourdnex_core.geometry.postopt.result import PostOptResult
from fourdnex_core.geometry.postopt.solve import post_optimize

__all__ = [
    "CameraModel",
    "MIN_POINTS_PER_FRAME",
    "PostOptResult",
    "RobustLoss",
    "XYZConvention",
    "decoded_xyz_to_scene",
    "mask_keeps",
    "post_optimize",
    "usable_points",
]
