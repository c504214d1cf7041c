"""4DNeX Synthetic Scene: a ray-cast 4D scene with known cameras, to try the geometry nodes in seconds.

A stand-in for 4DNeX Load Scene (the same three outputs) that needs no saved scene and no 14B
model: a checkered ground, moving spheres and boxes, a camera on an arc, rendered to RGB and XYZ
frames with the noise and outliers generated point maps have (:mod:`fourdnex_core.geometry.synthetic`).
"""

from __future__ import annotations

from fourdnex_core.geometry.accuracy import SHOWCASE_SCENE, truth_scene
from fourdnex_core.geometry.point_maps import point_maps_from_scene
from fourdnex_core.geometry.synthetic import make_synthetic_scene


class FourDNeXSyntheticScene:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "frames": ("INT", {"default": SHOWCASE_SCENE["num_frames"], "min": 1, "max": 1000,
                                   "tooltip": "Number of frames."}),
                "width": ("INT", {"default": SHOWCASE_SCENE["width"], "min": 8, "max": 4096, "step": 8,
                                  "tooltip": "Frame width in pixels."}),
                "height": ("INT", {"default": SHOWCASE_SCENE["height"], "min": 8, "max": 4096, "step": 8,
                                   "tooltip": "Frame height in pixels."}),
                "camera_motion": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 4.0, "step": 0.1,
                                            "tooltip": "Camera path length: 0 keeps the camera still, 1 swings it "
                                                       "24 degrees around the scene."}),
                "moving_scale": ("FLOAT", {"default": 1.0, "min": 0.1, "max": 4.0, "step": 0.1,
                                           "tooltip": "Size of the moving sphere and box (3 makes them fill much of "
                                                      "the frame)."}),
                "zoom": ("FLOAT", {"default": 1.0, "min": 0.5, "max": 2.0, "step": 0.05,
                                   "tooltip": "The last frame's focal length as a multiple of the first's (1: no "
                                              "zoom)."}),
                "noise": ("FLOAT", {"default": SHOWCASE_SCENE["noise"], "min": 0.0, "max": 0.5, "step": 0.005,
                                    "tooltip": "XYZ noise as a share of each point's depth (0.01 = 1 %)."}),
                "outlier_fraction": ("FLOAT", {"default": SHOWCASE_SCENE["outlier_fraction"], "min": 0.0,
                                               "max": 0.9, "step": 0.01,
                                               "tooltip": "Share of pixels whose XYZ is thrown off its ray "
                                                          "(flying pixels)."}),
                "seed": ("INT", {"default": SHOWCASE_SCENE["seed"], "min": 0, "max": 2**31 - 1,
                                 "control_after_generate": True,
                                 "tooltip": "Places the objects and draws the noise and outliers."}),
            },
        }

    RETURN_TYPES = ("POINTMAPS", "CAMERAS", "IMAGE")
    RETURN_NAMES = ("point_maps", "true_cameras", "rgb_frames")
    FUNCTION = "make"
    CATEGORY = "4DNeX/io"
    DESCRIPTION = ("A synthetic 4D scene with known geometry (a moving camera, moving objects, noisy XYZ with "
                   "outliers), in place of 4DNeX Load Scene: try post-optimization, point clouds, the viewer, saving "
                   "and novel views in seconds, without the 14B model. true_cameras are the cameras the frames were "
                   "rendered with (intrinsics, poses and depth), to compare with what 4DNeX Post-Optimize recovers.")

    def make(self, frames, width, height, camera_motion, moving_scale, zoom, noise, outlier_fraction, seed):
        synthetic = make_synthetic_scene(frames, height, width, camera_motion=camera_motion,
                                         moving_scale=moving_scale, zoom=zoom, noise=noise,
                                         outlier_fraction=outlier_fraction, seed=seed)
        point_maps, _ = point_maps_from_scene(synthetic.to_scene_file())
        _, true_cameras = point_maps_from_scene(truth_scene(synthetic))
        return (point_maps, true_cameras, point_maps.rgb)


NODE_CLASS_MAPPINGS = {"FourDNeXSyntheticScene": FourDNeXSyntheticScene}
NODE_DISPLAY_NAME_MAPPINGS = {"FourDNeXSyntheticScene": "4DNeX Synthetic Scene (known cameras)"}
