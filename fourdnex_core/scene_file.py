"""The ``scene.npz`` file: one generated 4D scene, written and read without pickle.

Arrays (F frames of H x W pixels per modality). Inputs, as generated or supplied, which no
analysis step ever changes:

============  ==================  ========================================================
key           shape / dtype       meaning
============  ==================  ========================================================
rgb           [F, H, W, 3] uint8  RGB frames
xyz           [F, H, W, 3] f32    the point maps as generated (or supplied), in scene units
                                  (first camera's frame): what post-optimization fits, and
                                  never the registered points (below), whoever wrote the file
mask          [F, H, W] bool      optional validity from the producer or the user (False
                                  drops a point: known sky, a bad region)
confidence    [F, H, W] f32       optional per-point confidence >= 0 (0 or NaN: invalid);
                                  weights post-optimization, filters point clouds
============  ==================  ========================================================

Derived by post-optimization (``fourdnex postopt`` and the Post-Optimize node write all of them,
from the inputs above, so a run with other settings starts from the same points):

============  ==================  ========================================================
depth         [F, H, W] f32       per-pixel depth along the camera z axis (0: not used)
K             [3, 3] f32          intrinsics, OpenCV convention: one K for all frames,
              or [F, 3, 3] f32    or one per frame (the camera zooms)
cams2world    [F, 4, 4] f32       camera-to-world transforms, OpenCV convention
residuals     [F] f32             post-optimization fit error per frame (scene units)
valid         [F, H, W] bool      the points the fit used: finite xyz, inside ``mask``,
                                  confidence at least that run's threshold
============  ==================  ========================================================

The registered (post-optimized) points are not stored: they are ``depth`` back-projected
through ``K`` and ``cams2world`` (``R K^-1 d [u, v, 1] + t``), which is what the point clouds,
exports and renders of a post-optimized scene use
(:func:`~fourdnex_core.geometry.pointcloud.frame_points`).

``version`` (an integer scalar, :data:`SCENE_VERSION`) says which meaning the arrays have;
:func:`save_scene` writes it. Files without it are version 1, from before ``xyz`` had one
meaning: the ComfyUI save node stored the registered points in ``xyz`` and the fit's selection in
``mask``, and early ``fourdnex postopt`` runs wrote that selection back into ``mask`` too. A
version-1 file with cameras and no ``valid`` is read with its ``mask`` as ``valid`` (a derived
selection, not the user's), so point clouds show the same points and a new post-optimization
starts from all of them; its ``xyz`` is read as it is (a saved node file's registered points
agree with its cameras; the generated ones were not kept). A file of a newer version is refused.

Only ``rgb`` and ``xyz`` are required. Reading checks each array's shape and dtype (``rgb``
uint8, ``mask`` and ``valid`` bool, the rest floating point).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from fourdnex_core.atomic_write import atomic_path

_DTYPES = {"rgb": np.uint8, "xyz": np.float32, "depth": np.float32, "K": np.float32,
           "cams2world": np.float32, "mask": np.bool_, "residuals": np.float32, "confidence": np.float32,
           "valid": np.bool_}
_BOOL = ("mask", "valid")
SCENE_VERSION = 2  # the file format's version (the module docstring); 1: files without ``version``
_DERIVED = ("depth", "K", "cams2world", "residuals", "valid")


@dataclasses.dataclass
class Scene:
    """A generated 4D scene; see the module docstring for shapes."""

    rgb: np.ndarray
    xyz: np.ndarray
    depth: np.ndarray | None = None
    K: np.ndarray | None = None
    cams2world: np.ndarray | None = None
    mask: np.ndarray | None = None
    residuals: np.ndarray | None = None
    confidence: np.ndarray | None = None
    valid: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.rgb.ndim != 4 or self.rgb.shape[-1] != 3:
            raise ValueError(f"Scene.rgb must be [F, H, W, 3], got {tuple(self.rgb.shape)}.")
        if self.xyz.shape != self.rgb.shape:
            raise ValueError(
                f"Scene.xyz {tuple(self.xyz.shape)} must have the shape of Scene.rgb {tuple(self.rgb.shape)}."
            )
        frames, height, width, _ = self.rgb.shape
        expected = {"depth": (frames, height, width), "K": (3, 3), "cams2world": (frames, 4, 4),
                    "mask": (frames, height, width), "residuals": (frames,), "confidence": (frames, height, width),
                    "valid": (frames, height, width)}
        if self.K is not None and tuple(self.K.shape) == (frames, 3, 3):
            expected["K"] = (frames, 3, 3)  # one K per frame
        for key, shape in expected.items():
            value = getattr(self, key)
            if value is not None and tuple(value.shape) != shape:
                also = f" or {(frames, 3, 3)} (one per frame)" if key == "K" else ""
                raise ValueError(f"Scene.{key} must have shape {shape}{also}, got {tuple(value.shape)}.")

    @property
    def num_frames(self) -> int:
        return self.rgb.shape[0]

    def frame_K(self, index: int) -> np.ndarray:
        """Intrinsics [3, 3] of frame ``index`` (the shared K, or that frame's). Needs K."""
        if self.K is None:
            raise ValueError("The scene has no intrinsics; post-optimize it first.")
        return self.K if self.K.ndim == 2 else self.K[index]

    def point_mask(self) -> np.ndarray | None:
        """[F, H, W] bool: the points to show (``mask`` and, after post-optimization, ``valid``), or
        None when the scene has neither."""
        if self.mask is None or self.valid is None:
            return self.valid if self.mask is None else self.mask
        return self.mask & self.valid

    def check_points(self, source: str | Path = "the scene") -> int:
        """The number of usable points (finite xyz kept by :meth:`point_mask`); a ValueError when
        there is none or they all sit at one place (an all-NaN or all-zero scene is no result)."""
        usable = np.isfinite(self.xyz).all(axis=-1)
        mask = self.point_mask()
        if mask is not None:
            usable &= mask
        count = int(usable.sum())
        if count == 0:
            masked = " or masked out" if mask is not None else ""
            raise ValueError(f"{source} holds no usable point (every xyz is NaN or infinite{masked}): the run that "
                             "wrote it failed. Generate the scene again.")
        points = self.xyz[usable]
        if count > 1 and not (points.max(axis=0) > points.min(axis=0)).any():
            raise ValueError(f"{source}: all {count} usable points sit at one place {tuple(points[0].tolist())}; "
                             "the point maps are empty (all zero?). Generate the scene again.")
        return count

    def arrays(self) -> dict[str, np.ndarray]:
        """The scene's arrays by key, in their file dtypes, optional ones only when set."""
        out = {}
        for key, dtype in _DTYPES.items():
            value = getattr(self, key)
            if value is not None:
                out[key] = np.ascontiguousarray(value, dtype=dtype)
        return out


def save_scene(scene: Scene, path: str | Path) -> Path:
    """Write ``scene`` to ``path`` (``.npz``, compressed, no pickled objects), atomically: an
    interrupted write leaves the earlier file at ``path`` as it was."""
    path = Path(path)
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        np.savez_compressed(handle, version=np.int32(SCENE_VERSION), **scene.arrays())
    return path


def load_scene(path: str | Path) -> Scene:
    """Read a scene written by :func:`save_scene`. Refuses pickled content."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No scene file at {path}. Run `fourdnex generate` first; it writes scene.npz.")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except ValueError as error:
        raise ValueError(
            f"{path} is not a scene .npz file: it is truncated, another kind of file, or holds pickled "
            "objects (refused). Write it again with `fourdnex generate`."
        ) from error
    except Exception as error:  # zipfile.BadZipFile, OSError, EOFError
        raise ValueError(f"{path} could not be read as a scene .npz file ({error}); it may be truncated.") from error
    version = _version(path, arrays.pop("version", None))
    missing = [key for key in ("rgb", "xyz") if key not in arrays]
    if missing:
        raise ValueError(f"{path} has no {', '.join(missing)} array; a scene needs rgb and xyz.")
    unknown = sorted(set(arrays) - set(_DTYPES))
    if unknown:
        raise ValueError(f"{path} holds unknown arrays {unknown}; expected a subset of {sorted(_DTYPES)}.")
    _check_dtypes(path, arrays)
    if version == 1 and "valid" not in arrays and "mask" in arrays and any(key in arrays for key in _DERIVED):
        arrays["valid"] = arrays.pop("mask")  # the fit's selection, written into mask before `valid` existed
    return Scene(**arrays)


def _version(path: Path, value: np.ndarray | None) -> int:
    """The file's format version (1 when it has none); a ValueError for a newer or malformed one."""
    if value is None:
        return 1
    if value.shape != () or not np.issubdtype(value.dtype, np.integer):
        raise ValueError(f"{path}: version must be one integer, got {value.dtype} {value.shape}; it is not a scene "
                         "file this pack wrote.")
    version = int(value)
    if not 1 <= version <= SCENE_VERSION:
        raise ValueError(f"{path} is a version-{version} scene file; this pack reads versions 1 to {SCENE_VERSION}. "
                         "Update ComfyUI-4DNeX to read it.")
    return version


def _check_dtypes(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Raise a ValueError naming the array, its dtype and the fix unless rgb is uint8, mask bool,
    and every other array floating point."""
    rgb = arrays["rgb"]
    if rgb.dtype != np.uint8:
        fix = ("for colours in [0, 1], np.clip(rgb * 255, 0, 255).round().astype(np.uint8)"
               if np.issubdtype(rgb.dtype, np.floating) else "rgb.astype(np.uint8)")
        raise ValueError(f"{path}: rgb must be uint8 [F, H, W, 3] with values 0..255, got {rgb.dtype}. Convert it "
                         f"to uint8 0..255 ({fix}) and save the scene again.")
    for key, value in arrays.items():
        if key in _BOOL and value.dtype != np.bool_:
            raise ValueError(f"{path}: {key} must be bool (True = valid point), got {value.dtype}; save "
                             f"{key}.astype(bool), or a float confidence map as 'confidence'.")
        if key not in ("rgb", *_BOOL) and not np.issubdtype(value.dtype, np.floating):
            raise ValueError(f"{path}: {key} must be floating point (float32), got {value.dtype}; save "
                             f"{key}.astype(np.float32).")
