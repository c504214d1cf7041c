"""Post-optimization, point clouds, the in-node 4D preview, saving, loading and novel-view rendering."""

from __future__ import annotations

import logging

from fourdnex_core.geometry.export_glb import write_glb
from fourdnex_core.geometry.export_scene import ExportOptions, ExportPaths, check_export, export_scene
from fourdnex_core.geometry.export_viewer import write_viewer_points
from fourdnex_core.geometry.keyframes import KEYFRAME_TRAJECTORIES, keyframe_trajectory, parse_keyframes
from fourdnex_core.geometry.point_maps import camera_set, depth_image, point_maps_from_postopt, point_maps_from_scene
from fourdnex_core.geometry.point_maps import scene_from
from fourdnex_core.geometry.pointcloud import PointFilter
from fourdnex_core.geometry.postopt import post_optimize
from fourdnex_core.geometry.postopt.models import CAMERA_MODEL_CHOICES
from fourdnex_core.geometry.render import Rendering, fit_intrinsics, render_views
from fourdnex_core.geometry.trajectories import TRAJECTORIES, preview_cameras, views_intrinsics
from fourdnex_core.geometry.trajectories import trajectory as trajectory_poses
from fourdnex_core.scene_file import load_scene
from fourdnex_core.scene_file import save_scene as write_scene

from . import comfy_bridge as comfy
from .comfy_values import PointClouds

logger = logging.getLogger(__name__)

MAX_POINTS = 10_000_000
VIEWER_SUBFOLDER = "4dnex_viewer"


def _render(clouds, K, cams2world, scene_size, width, height, point_size, progress, background=(0.0, 0.0, 0.0)):
    """Render ``clouds`` along ``cams2world`` as one CPU :class:`Rendering` batch (image [N, H, W, 3],
    depth [N, H, W]), stepping ``progress`` per view; ``background``: RGB in [0, 1] of the holes."""
    height, width = height or scene_size[0], width or scene_size[1]
    K = fit_intrinsics(K, scene_size, (height, width))
    views = []
    for rendering in render_views(clouds, K, cams2world, height, width, point_size, background,
                                  device=comfy.torch_device(), progress=False):
        views.append(Rendering(rendering.image.cpu(), rendering.depth.cpu()))
        progress.step()
    return Rendering.stack(views)


class FourDNeXPostOptimize:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "point_maps": ("POINTMAPS", {"tooltip": "Decoded XYZ frames (4DNeX Decode or Load Scene)."}),
                "iterations": ("INT", {"default": 20, "min": 1, "max": 1000,
                                       "tooltip": "Most Levenberg-Marquardt iterations (stops when converged)."}),
                "robust": (["cauchy", "huber", "none"], {"default": "cauchy",
                                                         "tooltip": "Robust loss against outlier points."}),
                "focal": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 100000.0, "step": 1.0,
                                    "tooltip": "Known focal length in pixels, kept fixed; 0 estimates it."}),
                "camera_model": (list(CAMERA_MODEL_CHOICES), {
                    "default": "auto",
                    "tooltip": "auto: one K with the principal point at the image centre, plus a fitted principal "
                               "point and/or a focal per frame (a zoom) where the data supports them; or a fixed "
                               "choice."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    RETURN_TYPES = ("CAMERAS", "IMAGE", "MASK", "POINTMAPS")
    RETURN_NAMES = ("cameras", "depth_image", "depth_mask", "registered_point_maps")
    FUNCTION = "optimize"
    CATEGORY = "4DNeX/geometry"
    DESCRIPTION = ("Recovers the intrinsics K (one for all frames, or one per frame where the camera zooms), a "
                   "camera per frame and a depth per pixel from the XYZ frames (paper eq. 9-10). Depth is shown as "
                   "inverse depth (near bright), as an IMAGE and a MASK.")

    def optimize(self, point_maps, iterations, robust, focal, camera_model, unique_id=None):
        if camera_model not in CAMERA_MODEL_CHOICES:
            raise ValueError(f"camera_model must be one of {list(CAMERA_MODEL_CHOICES)}, got {camera_model!r}.")
        fix_principal_point, zoom = CAMERA_MODEL_CHOICES[camera_model]
        progress = comfy.Progress(2, unique_id)
        progress.step(0)
        result = post_optimize(point_maps.xyz, point_maps.mask, focal=focal or None, iterations=iterations,
                               robust=robust, fix_principal_point=fix_principal_point, zoom=zoom)
        logger.info("4DNeX Post-Optimize: %s", result.camera_model)
        progress.step(2)
        cameras, registered = point_maps_from_postopt(point_maps, result)
        depth = depth_image(result.depth, result.valid)
        return (cameras, depth[..., None].expand(-1, -1, -1, 3).contiguous(), depth, registered)


class FourDNeXPointClouds:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "point_maps": ("POINTMAPS", {"tooltip": "XYZ frames with colours."}),
                "max_points": ("INT", {"default": 200_000, "min": 0, "max": MAX_POINTS, "step": 1000,
                                       "tooltip": "Point budget per frame; 0 keeps every pixel's point."}),
                "downsample": (["stride", "voxel"], {
                    "default": "stride", "tooltip": "Meet the budget by every k-th pixel or by voxel means."}),
                "edge_rtol": ("FLOAT", {"default": 0.1, "min": 0.0, "max": 10.0, "step": 0.01,
                                        "tooltip": "Drop 'flying pixels' where inverse depth jumps by more than this "
                                                   "share (needs cameras); 0 keeps them."}),
                "outlier_std": ("FLOAT", {"default": 2.0, "min": 0.0, "max": 100.0, "step": 0.1,
                                          "tooltip": "Drop points whose neighbour spacing is above median + this many "
                                                     "std; 0 keeps them."}),
                "use_mask": ("BOOLEAN", {"default": True, "tooltip": "Drop pixels outside the validity mask."}),
            },
            "optional": {
                "cameras": ("CAMERAS", {"tooltip": "From 4DNeX Post-Optimize: points are re-projected from depth and "
                                                   "cameras, depth edges can be filtered, novel views rendered."}),
            },
        }

    RETURN_TYPES = ("POINTCLOUDS",)
    RETURN_NAMES = ("point_clouds",)
    FUNCTION = "build"
    CATEGORY = "4DNeX/geometry"
    DESCRIPTION = "Turns point maps (and cameras) into per-frame coloured point clouds with filters and a point budget."

    def build(self, point_maps, max_points, downsample, edge_rtol, outlier_std, use_mask, cameras=None):
        point_filter = PointFilter(use_mask=use_mask, depth_edge_rtol=edge_rtol or None,
                                   outlier_std_ratio=outlier_std or None)
        return (PointClouds(scene_from(point_maps, cameras), point_filter, max_points or None, downsample),)


class FourDNeXPointCloudPreview:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "point_clouds": ("POINTCLOUDS", {"tooltip": "From 4DNeX Point Clouds."}),
                "max_points": ("INT", {"default": 50_000, "min": 1000, "max": 2_000_000, "step": 1000,
                                       "tooltip": "Points per frame sent to the in-node viewer (keeps it fast)."}),
                "point_size": ("FLOAT", {"default": 2.0, "min": 0.5, "max": 20.0, "step": 0.5,
                                         "tooltip": "Initial point size in the viewer, in pixels."}),
                "fps": ("FLOAT", {"default": 24.0, "min": 1.0, "max": 120.0, "step": 1.0,
                                  "tooltip": "Playback rate of the viewer and of the GLB animation."}),
                "render_width": ("INT", {"default": 0, "min": 0, "max": 4096, "step": 16,
                                         "tooltip": "Width of the rendered IMAGE; 0 is the scene's."}),
                "render_height": ("INT", {"default": 0, "min": 0, "max": 4096, "step": 16,
                                          "tooltip": "Height of the rendered IMAGE; 0 is the scene's."}),
                "camera_keyframes": ("STRING", {
                    "default": "", "tooltip": "Views stored with the viewer's 'add view' button (JSON: OpenCV "
                                              "cam2world + vertical field of view per view; 'clear views' empties "
                                              "it). Saved with the workflow."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    RETURN_TYPES = ("IMAGE", "STRING", "FOURDNEX_CAMERA_PATH")
    RETURN_NAMES = ("rendered", "model_file", "camera_path")
    OUTPUT_TOOLTIPS = ("The clouds rendered from the recovered cameras (or an overview camera).",
                       "The GLB's path under the output folder, for Preview3D.",
                       "The viewer's keyframes, for 4DNeX Render Novel View (trajectory viewer-path or "
                       "viewer-view).")
    OUTPUT_NODE = True
    FUNCTION = "preview"
    CATEGORY = "4DNeX/geometry"
    DESCRIPTION = ("An interactive 4D viewer in the node (orbit with the mouse, frame slider, play/pause, point size "
                   "and budget; 'add view' stores the view as a camera keyframe for 4DNeX Render Novel View). Also "
                   "renders the clouds from the recovered cameras (or an overview camera) as an "
                   "IMAGE batch, and writes a POINTS GLB whose path (model_file) ComfyUI's Preview3D can show.")

    def preview(self, point_clouds, max_points, point_size, fps, render_width, render_height, camera_keyframes="",
                unique_id=None):
        keyframes = parse_keyframes(camera_keyframes)  # bad text fails before any work
        scene = point_clouds.scene
        clouds = point_clouds.clouds(max_points)
        progress = comfy.Progress(2 * len(clouds), unique_id)
        temp, stem = comfy.save_path(comfy.temp_directory(), f"{VIEWER_SUBFOLDER}/points")
        name = f"{stem}.bin"
        write_viewer_points(temp / name, _stepping(clouds, progress), fps)
        glb_folder, glb_stem = comfy.save_path(comfy.output_directory(), "3d/4dnex_points")
        glb_name = f"{glb_stem}.glb"
        write_glb(glb_folder / glb_name, clouds, fps)
        K, cams2world = preview_cameras(scene)
        rendered = _render(clouds, K, cams2world, scene.rgb.shape[1:3], render_width, render_height, 1, progress).image
        viewer = {"filename": name, "subfolder": VIEWER_SUBFOLDER, "type": "temp", "frames": len(clouds),
                  "fps": fps, "point_size": point_size, "max_points": max_points}
        model_file = f"3d/{glb_name}"
        return {"ui": {"fourdnex_points": [viewer], "model_file": [model_file]},
                "result": (rendered, model_file, keyframes)}


def _stepping(clouds, progress):
    for cloud in clouds:
        progress.step()
        yield cloud


SAVE_COLMAP = {"off": None, "binary": "binary", "text": "text"}


def _interruptible(frames):
    for frame in frames:
        comfy.throw_if_interrupted()
        yield frame


class FourDNeXSave:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "point_clouds": ("POINTCLOUDS", {"tooltip": "From 4DNeX Point Clouds."}),
                "filename_prefix": ("STRING", {"default": "4dnex/scene",
                                               "tooltip": "Path under ComfyUI's output folder; '..' and absolute "
                                                          "paths are refused. A counter is appended."}),
                "save_scene": ("BOOLEAN", {"default": True, "tooltip": "scene.npz: rgb, xyz, cameras, depth, mask "
                                                                       "(what 4DNeX Load Scene and the CLI read)."}),
                "save_ply": ("BOOLEAN", {"default": False, "tooltip": "One binary PLY per frame (filtered points)."}),
                "save_glb": ("BOOLEAN", {"default": True, "tooltip": "One GLB, a POINTS node per frame, animated."}),
                "save_cameras": ("BOOLEAN", {"default": True, "tooltip": "cameras.json (OpenCV), when the scene "
                                                                         "has cameras."}),
                "fps": ("FLOAT", {"default": 24.0, "min": 0.0, "max": 120.0, "step": 1.0,
                                  "tooltip": "GLB animation rate; 0: no animation, every frame shown at once."}),
                "save_colmap": (list(SAVE_COLMAP), {
                    "default": "off", "tooltip": "A COLMAP sparse model (sparse/0, binary or text) and the RGB frames "
                                                 "(images/) in the <name>dataset folder: colmap gui, 3DGS trainers. "
                                                 "Needs cameras (4DNeX Post-Optimize)."}),
                "colmap_frame_stride": ("INT", {"default": 0, "min": 0, "max": 10000,
                                                "tooltip": "COLMAP points from frame 0 only (0) or every k-th frame, "
                                                           "within the point budget."}),
                "save_nerfstudio": ("BOOLEAN", {"default": False, "tooltip": "Nerfstudio transforms.json and the RGB "
                                                                             "frames in the <name>dataset folder "
                                                                             "(ns-train). Needs cameras."}),
                "save_splats": ("BOOLEAN", {"default": False, "tooltip": "One Gaussian-splat PLY per frame (3DGS "
                                                                         "layout: SuperSplat, splat viewers)."}),
                "save_rerun": ("BOOLEAN", {"default": False, "tooltip": "A Rerun recording (.rrd): points, cameras, "
                                                                        "RGB and depth per frame (needs rerun-sdk)."}),
                "splat_sh_degree": ("INT", {"default": 0, "min": 0, "max": 3, "step": 3,
                                            "tooltip": "Spherical-harmonic degree of the splat PLYs: 0 (colour only; "
                                                       "SuperSplat and most viewers) or 3 (45 f_rest_* zeros, what "
                                                       "the original 3DGS code loads at its default)."}),
            },
        }

    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("scene_file",)
    OUTPUT_NODE = True
    FUNCTION = "save"
    CATEGORY = "4DNeX/io"
    DESCRIPTION = ("Saves the scene under ComfyUI's output folder: NPZ scene, PLY sequence, GLB, cameras JSON, and on "
                   "request a COLMAP model, Nerfstudio transforms.json, Gaussian-splat PLYs and a Rerun recording. "
                   "Returns the scene file's path relative to the output folder.")

    def save(self, point_clouds, filename_prefix, save_scene, save_ply, save_glb, save_cameras, fps,
             save_colmap="off", colmap_frame_stride=0, save_nerfstudio=False, save_splats=False, save_rerun=False,
             splat_sh_degree=0):
        if save_colmap not in SAVE_COLMAP:
            raise ValueError(f"save_colmap must be one of {list(SAVE_COLMAP)}, got {save_colmap!r}.")
        root = comfy.output_directory()
        scene, written = point_clouds.scene, []
        scene.check_points("The scene to save")
        cameras = camera_set(scene) if scene.K is not None and scene.cams2world is not None else None
        folder, stem = comfy.save_path(root, filename_prefix)
        paths = ExportPaths(ply=folder / f"{stem}ply" if save_ply else None,
                            glb=folder / f"{stem}.glb" if save_glb else None,
                            splats=folder / f"{stem}splats" if save_splats else None,
                            rerun=folder / f"{stem}.rrd" if save_rerun else None,
                            cameras_json=folder / f"{stem}cameras.json" if save_cameras and cameras else None,
                            dataset=folder / f"{stem}dataset", nerfstudio=save_nerfstudio,
                            colmap=SAVE_COLMAP[save_colmap])
        options = ExportOptions(fps=fps or None, colmap_stride=colmap_frame_stride,
                                colmap_max_points=point_clouds.max_points, splat_sh_degree=splat_sh_degree,
                                ply_file_path=f"../{stem}ply/frame_00000.ply" if save_ply else None)
        check_export(paths, options, cameras, scene.num_frames)  # before anything is written
        if save_scene:
            written.append(write_scene(scene, folder / f"{stem}.npz"))
        written += export_scene(scene, point_clouds.clouds(), paths, options, cameras, frames=_interruptible)
        relative = [p.resolve().relative_to(root.resolve()).as_posix() for p in written]
        scene_file = relative[0] if save_scene else ""
        return {"ui": {"text": relative}, "result": (scene_file,)}


class FourDNeXLoadScene:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"scene_file": ("STRING", {
            "default": "4dnex/scene_00001_.npz",
            "tooltip": "A scene.npz, relative to ComfyUI's output folder (where 4DNeX Save writes) or input folder."})}}

    RETURN_TYPES = ("POINTMAPS", "CAMERAS", "IMAGE")
    RETURN_NAMES = ("point_maps", "cameras", "rgb_frames")
    FUNCTION = "load"
    CATEGORY = "4DNeX/io"
    DESCRIPTION = ("Loads a scene.npz (from 4DNeX Save or `fourdnex generate`). cameras is empty when the scene was "
                   "not post-optimized; run 4DNeX Post-Optimize on its point maps then.")

    def load(self, scene_file):
        for root in (comfy.output_directory(), comfy.input_directory()):
            folder, name = comfy.safe_output_folder(root, scene_file)
            if (folder / name).is_file():
                point_maps, cameras = point_maps_from_scene(load_scene(folder / name))
                return (point_maps, cameras, point_maps.rgb)
        raise FileNotFoundError(f"No scene file {scene_file!r} in ComfyUI's output or input folder; save one with "
                                "4DNeX Save (it prints the file name) or copy a scene.npz into input/.")


class FourDNeXRenderNovelView:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "point_clouds": ("POINTCLOUDS", {"tooltip": "Point clouds of a post-optimized scene (with cameras)."}),
                "trajectory": (list(TRAJECTORIES + KEYFRAME_TRAJECTORIES), {
                    "default": "orbit",
                    "tooltip": "orbit around what the first camera looks at, dolly along its axis, the recovered "
                               "path, or it offset; viewer-path: through the viewer's keyframes (camera_path), "
                               "viewer-view: from its first keyframe."}),
                "num_views": ("INT", {"default": 0, "min": 0, "max": 10000,
                                      "tooltip": "Views for orbit, dolly and the viewer's keyframes; 0 is the "
                                                 "scene's frame count."}),
                "arc_degrees": ("FLOAT", {"default": 30.0, "min": -360.0, "max": 360.0, "step": 1.0,
                                          "tooltip": "Orbit sweep, centred on the first camera."}),
                "distance": ("FLOAT", {"default": 0.3, "min": -10.0, "max": 10.0, "step": 0.05,
                                       "tooltip": "Dolly travel in median depths, + forward."}),
                "offset_x": ("FLOAT", {"default": 0.1, "min": -10.0, "max": 10.0, "step": 0.01,
                                       "tooltip": "path-offset shift to the right, in median depths."}),
                "offset_y": ("FLOAT", {"default": 0.0, "min": -10.0, "max": 10.0, "step": 0.01,
                                       "tooltip": "path-offset shift down, in median depths."}),
                "offset_z": ("FLOAT", {"default": 0.0, "min": -10.0, "max": 10.0, "step": 0.01,
                                       "tooltip": "path-offset shift forward, in median depths."}),
                "time_frame": ("INT", {"default": -1, "min": -1, "max": 10000,
                                       "tooltip": "Show this scene frame from every view; -1 plays the scene along "
                                                  "the path."}),
                "width": ("INT", {"default": 0, "min": 0, "max": 4096, "step": 16,
                                  "tooltip": "Output width; 0 is the scene's."}),
                "height": ("INT", {"default": 0, "min": 0, "max": 4096, "step": 16,
                                   "tooltip": "Output height; 0 is the scene's."}),
                "point_size": ("INT", {"default": 1, "min": 1, "max": 16,
                                       "tooltip": "Side of each point's square splat in pixels."}),
            },
            "optional": {
                "camera_path": ("FOURDNEX_CAMERA_PATH", {
                    "tooltip": "Keyframes from the 4D viewer (4DNeX Point Cloud Preview's camera_path), followed "
                               "by the viewer-path and viewer-view trajectories."}),
                "background": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.05,
                                         "tooltip": "Grey level of the frames' pixels no point covers: 0 black; "
                                                    "0.5 for WanVaceToVideo's control_video (VACE was trained with "
                                                    "the pixels to fill set to grey)."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    RETURN_TYPES = ("IMAGE", "MASK", "IMAGE")
    RETURN_NAMES = ("frames", "hole_masks", "depth")
    OUTPUT_TOOLTIPS = ("The rendered views [B, H, W, 3], the background grey where no point lands.",
                       "1 where no point's splat covers the pixel (holes, disocclusions, letterbox bands), 0 "
                       "elsewhere [B, H, W]: the 'to be generated' convention of inpainting masks and of "
                       "WanVaceToVideo's control_masks.",
                       "Depth of the visible points [B, H, W, 3], near bright: inverse depth scaled between its "
                       "1st and 99th percentile over the whole batch; holes are 0 (black).")
    FUNCTION = "render"
    CATEGORY = "4DNeX/geometry"
    DESCRIPTION = ("Renders the point clouds from a novel camera trajectory (distances in units of the first "
                   "frame's median depth) as an IMAGE batch, with a hole MASK (1 = no point: what a video model "
                   "should fill, e.g. WanVaceToVideo's control_video + control_masks) and a depth IMAGE per view.")

    def render(self, point_clouds, trajectory, num_views, arc_degrees, distance, offset_x, offset_y, offset_z,
               time_frame, width, height, point_size, camera_path=None, background=0.0, unique_id=None):
        scene = point_clouds.scene
        size = scene.rgb.shape[1:3]
        if trajectory in KEYFRAME_TRAJECTORIES:  # K at the output size: the viewer's vertical field of view kept
            size = (height or size[0], width or size[1])
            poses, K = keyframe_trajectory(camera_path, trajectory, num_views or scene.num_frames, *size)
            logger.info("4DNeX Render Novel View: %s through %d keyframes, %d views", trajectory, len(camera_path),
                        poses.shape[0])
        elif scene.K is None or scene.cams2world is None:
            raise ValueError("The scene has no cameras; run 4DNeX Post-Optimize on the point maps first.")
        else:
            poses = trajectory_poses(scene, trajectory, num_views or scene.num_frames, arc_degrees, distance,
                                     (offset_x, offset_y, offset_z))
            K = views_intrinsics(scene.K, trajectory, poses.shape[0])
        clouds = point_clouds.clouds()
        if time_frame >= 0:
            if time_frame >= len(clouds):
                raise ValueError(f"time_frame must be below the scene's {len(clouds)} frames, or -1.")
            clouds = [clouds[time_frame]]
        progress = comfy.Progress(poses.shape[0], unique_id)
        rendered = _render(clouds, K, poses, size, width, height, point_size, progress, (background,) * 3)
        depth = depth_image(rendered.depth, rendered.coverage)
        return (rendered.image, rendered.holes.float(), depth[..., None].expand(-1, -1, -1, 3).contiguous())


NODE_CLASS_MAPPINGS = {
    "FourDNeXPostOptimize": FourDNeXPostOptimize,
    "FourDNeXPointClouds": FourDNeXPointClouds,
    "FourDNeXPointCloudPreview": FourDNeXPointCloudPreview,
    "FourDNeXSave": FourDNeXSave,
    "FourDNeXLoadScene": FourDNeXLoadScene,
    "FourDNeXRenderNovelView": FourDNeXRenderNovelView,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "FourDNeXPostOptimize": "4DNeX Post-Optimize (cameras, depth)",
    "FourDNeXPointClouds": "4DNeX Point Clouds",
    "FourDNeXPointCloudPreview": "4DNeX Point Cloud Preview (4D viewer)",
    "FourDNeXSave": "4DNeX Save (NPZ, PLY, GLB, cameras)",
    "FourDNeXLoadScene": "4DNeX Load Scene",
    "FourDNeXRenderNovelView": "4DNeX Render Novel View",
}
