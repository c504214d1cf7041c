"""Point-splat rendering with a z-buffer, vectorised in torch (CPU or CUDA, whatever device the
points are on).

Camera model: OpenCV pinhole, pixel centres at integer coordinates, a point at camera
coordinates (x, y, z) lands at u = fx x / z + cx (column), v = fy y / z + cy (row), and is drawn
as a ``point_size`` x ``point_size`` square on the pixel nearest to (u, v).

Coverage and holes: point i *covers* the pixels of its splat, the ``point_size`` x ``point_size``
square of pixels whose rows run from ``floor(v_i + 0.5) - (point_size - 1) // 2`` over ``point_size``
rows (columns likewise from ``floor(u_i + 0.5)``), clipped to the image, provided its camera z is
above ``near`` and its camera coordinates are finite. A pixel is covered when at least one point
covers it (whether or not that point is the visible one); every other pixel is a *hole*: outside
the cloud, a gap between sparse points, a disocclusion (scene the input views never saw), or a
letterbox band of :func:`fit_intrinsics`. :attr:`Rendering.holes` is exactly the complement of the
union of the splat squares, and the depth map is finite exactly where a pixel is covered.

Z-buffer: each point is packed into one int64 key, (depth bits << 32) | point index (positive
float32 depths keep their order as integers). One ``scatter_reduce(..., "amin")`` finds the
nearest point centred on each pixel; a point_size x point_size minimum filter over that image then
gives the nearest point whose square splat covers each pixel, so the cost of larger splats does
not grow with the number of points. Ties go to the lower point index, so the result does not
depend on the order of the scatter.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import torch
from kornia.geometry.linalg import inverse_transformation
from tqdm import tqdm

from fourdnex_core.geometry.pointcloud import PointCloud

_EMPTY = torch.iinfo(torch.int64).max
_INDEX_BITS = 32
_MAX_COORD = float(1 << 30)


@dataclasses.dataclass
class Rendering:
    """One view, or a batch of N views stacked by :meth:`stack`.

    image: [H, W, 3] (or [N, H, W, 3]) float in [0, 1], the background colour in holes;
    depth: [H, W] (or [N, H, W]) float32 camera z (along the viewing axis, not the distance to the
    camera) of the visible point, inf in holes.
    """

    image: torch.Tensor
    depth: torch.Tensor

    @property
    def coverage(self) -> torch.Tensor:
        """[..., H, W] bool: pixels some point's splat covers (see the module docstring)."""
        return torch.isfinite(self.depth)

    @property
    def holes(self) -> torch.Tensor:
        """[..., H, W] bool: pixels no point's splat covers, the complement of :attr:`coverage`."""
        return ~self.coverage

    @classmethod
    def stack(cls, renderings: Sequence[Rendering]) -> Rendering:
        """N single views as one batch: image [N, H, W, 3], depth [N, H, W]."""
        if not renderings:
            raise ValueError("No views to stack; a trajectory needs at least one view.")
        return cls(torch.stack([r.image for r in renderings]), torch.stack([r.depth for r in renderings]))


def fit_intrinsics(K: torch.Tensor, source_size: tuple[int, int], target_size: tuple[int, int]) -> torch.Tensor:
    """Intrinsics [..., 3, 3] for a ``target_size`` (H, W) image showing all of a ``source_size`` view.

    The view is scaled uniformly by min(H'/H, W'/W) and centred, so nothing is cropped and
    pixels stay square.
    """
    (source_h, source_w), (target_h, target_w) = source_size, target_size
    scale = min(target_h / source_h, target_w / source_w)
    fitted = K.clone().to(torch.float64)
    fitted[..., :2, :2] *= scale
    fitted[..., 0, 2] = scale * (K[..., 0, 2] + 0.5) - 0.5 + (target_w - scale * source_w) / 2
    fitted[..., 1, 2] = scale * (K[..., 1, 2] + 0.5) - 0.5 + (target_h - scale * source_h) / 2
    return fitted.to(K.dtype)


def _nearest_per_pixel(rows: torch.Tensor, columns: torch.Tensor, keys: torch.Tensor, height: int, width: int,
                       point_size: int) -> torch.Tensor:
    """Smallest key among the points whose square splat covers each pixel: [H * W] int64.

    rows, columns: [N] pixel of each point's centre; keys: [N] int64. A splat covers
    ``point_size`` pixels per axis starting ``(point_size - 1) // 2`` before its centre. The keys
    are first reduced per centre pixel on a canvas grown by the splat size (so splats centred just
    off the image still reach it), then spread by a point_size x point_size minimum filter.
    """
    before = point_size - 1 - (point_size - 1) // 2
    canvas_h, canvas_w = height + point_size - 1, width + point_size - 1
    rows, columns = rows + before, columns + before
    inside = (rows >= 0) & (rows < canvas_h) & (columns >= 0) & (columns < canvas_w)
    # Points off the canvas go to pixel 0 with the empty key, which never wins the minimum.
    canvas = torch.full((canvas_h * canvas_w,), _EMPTY, dtype=torch.int64, device=keys.device)
    canvas.scatter_reduce_(0, torch.where(inside, rows * canvas_w + columns, 0), torch.where(inside, keys, _EMPTY),
                           reduce="amin")
    canvas = canvas.view(canvas_h, canvas_w)
    nearest = canvas[:height, :width].clone()
    for dy in range(point_size):
        for dx in range(point_size):
            torch.minimum(nearest, canvas[dy:dy + height, dx:dx + width], out=nearest)
    return nearest.reshape(-1)


def _as_unit_colors(colors: torch.Tensor) -> torch.Tensor:
    return colors.float() / 255.0 if colors.dtype == torch.uint8 else colors.float()


def splat_points(points: torch.Tensor, colors: torch.Tensor, K: torch.Tensor, world2cam: torch.Tensor,
                 height: int, width: int, point_size: int = 1,
                 background: tuple[float, float, float] = (0.0, 0.0, 0.0), near: float = 1e-4) -> Rendering:
    """Render one point set from one camera.

    points: [N, 3] scene coordinates; colors: [N, 3] uint8 or float in [0, 1]; K: [3, 3];
    world2cam: [4, 4]; point_size: side of the square splat in pixels; near: points with camera
    z <= near are dropped. Runs on ``points.device``.
    """
    if points.ndim != 2 or points.shape[1] != 3 or colors.shape != points.shape:
        raise ValueError(f"points and colors must both be [N, 3], got {tuple(points.shape)} and {tuple(colors.shape)}.")
    if K.shape != (3, 3) or world2cam.shape != (4, 4):
        raise ValueError(f"K must be [3, 3] and world2cam [4, 4], got {tuple(K.shape)} and {tuple(world2cam.shape)}.")
    if point_size < 1 or height < 1 or width < 1:
        raise ValueError(f"point_size, height and width must be positive, got {point_size}, {height}, {width}.")
    if points.shape[0] >= 1 << _INDEX_BITS:
        raise ValueError(f"{points.shape[0]} points exceed the z-buffer's 2^32 point indices; render fewer points.")
    device = points.device
    world2cam = world2cam.to(device=device, dtype=torch.float32)
    camera = points.float() @ world2cam[:3, :3].T + world2cam[:3, 3]
    depth = camera[:, 2]
    pixels = camera @ K.to(device=device, dtype=torch.float32).T
    uv = torch.nan_to_num(pixels[:, :2] / depth[:, None], nan=-_MAX_COORD).clamp(-_MAX_COORD, _MAX_COORD)
    center_columns, center_rows = torch.floor(uv + 0.5).long().T.contiguous()
    in_front = (depth > near) & torch.isfinite(camera).all(dim=1)
    depth_bits = depth.contiguous().view(torch.int32).to(torch.int64)
    keys = (depth_bits << _INDEX_BITS) | torch.arange(depth.shape[0], device=device)
    nearest = _nearest_per_pixel(center_rows, center_columns, torch.where(in_front, keys, _EMPTY),
                                 height, width, point_size)
    hit = nearest != _EMPTY
    winners = nearest[hit] & ((1 << _INDEX_BITS) - 1)
    image = torch.tensor(background, dtype=torch.float32, device=device).expand(height * width, 3).clone()
    image[hit] = _as_unit_colors(colors[winners])
    depth_map = torch.full((height * width,), float("inf"), device=device)
    depth_map[hit] = depth[winners]
    return Rendering(image.reshape(height, width, 3), depth_map.reshape(height, width))


def cloud_schedule(num_views: int, num_clouds: int) -> list[int]:
    """Which cloud each view shows: one-to-one for equal counts, else spread evenly over time."""
    if num_clouds < 1 or num_views < 1:
        raise ValueError(f"Need at least one view and one point cloud, got {num_views} and {num_clouds}.")
    if num_views == num_clouds:
        return list(range(num_views))
    if num_views == 1:
        return [0]
    return [round(view * (num_clouds - 1) / (num_views - 1)) for view in range(num_views)]


def render_views(clouds: Sequence[PointCloud], K: torch.Tensor, cams2world: torch.Tensor, height: int, width: int,
                 point_size: int = 1, background: tuple[float, float, float] = (0.0, 0.0, 0.0),
                 device: str | torch.device = "cpu", progress: bool = True) -> Iterator[Rendering]:
    """Render a point-cloud sequence along a camera trajectory, one view at a time.

    clouds: F point clouds (OpenCV axes); K: [3, 3] for the ``height`` x ``width`` output, or
    [N, 3, 3], one per view (a zooming camera); cams2world: [N, 4, 4]. View k shows
    ``clouds[cloud_schedule(N, F)[k]]``; a single cloud is shown from every camera (frozen time).
    """
    if cams2world.ndim != 3 or cams2world.shape[1:] != (4, 4):
        raise ValueError(f"cams2world must be [N, 4, 4], got {tuple(cams2world.shape)}.")
    if tuple(K.shape) not in ((3, 3), (cams2world.shape[0], 3, 3)):
        raise ValueError(f"K must be [3, 3] or [{cams2world.shape[0]}, 3, 3] (one per view), got {tuple(K.shape)}.")
    world2cams = inverse_transformation(cams2world.to(torch.float64)).to(device=device, dtype=torch.float32)
    schedule = cloud_schedule(cams2world.shape[0], len(clouds))
    loaded_index, points, colors = -1, None, None
    for view, cloud_index in enumerate(tqdm(schedule, desc="render", unit="view", disable=not progress)):
        if cloud_index != loaded_index:
            cloud = clouds[cloud_index]
            points = torch.from_numpy(cloud.positions).to(device)
            colors = torch.from_numpy(cloud.colors).to(device)
            loaded_index = cloud_index
        view_K = K[view] if K.ndim == 3 else K
        yield splat_points(points, colors, view_K, world2cams[view], height, width, point_size, background)
