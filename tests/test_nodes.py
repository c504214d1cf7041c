"""Every node class called directly (no ComfyUI) on the tiny model set in ComfyUI's layout."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from format_readers import read_glb, read_ply, read_viewer_points, validate_glb

import nodes
from fourdnex_core.encoders import encode_prompt, with_pointmap_style
from fourdnex_core.geometry.synthetic import make_synthetic_scene
from fourdnex_core.geometry.point_maps import PointMaps
from fourdnex_core.image_io import fit_image, image_to_tensor, load_image
from fourdnex_core.model_set import ModelLocations, load_pipeline
from fourdnex_core.sampler import SamplingSettings
from fourdnex_core.scene_file import load_scene
from fourdnex_core.tiny import COMFY_FILES, make_tiny_models
from nodes.comfy_bridge import safe_output_folder
from nodes.comfy_values import ClipVisionOutput, conditioning, text_embeds

N = nodes.NODE_CLASS_MAPPINGS
EXAMPLE = Path(__file__).resolve().parents[1] / "fourdnex_core" / "assets" / "example.png"
FRAMES, HEIGHT, WIDTH, STEPS = 5, 32, 48, 2


def call(name: str, **kwargs):
    """Call a node the way ComfyUI does; returns its outputs tuple (and ui dict for output nodes)."""
    node = N[name]()
    out = getattr(node, N[name].FUNCTION)(**kwargs)
    if isinstance(out, dict):
        return out["result"], out["ui"]
    return out


@pytest.fixture(scope="module")
def comfy_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("comfy")
    tiny = make_tiny_models(root / "tiny")
    env = {"FOURDNEX_MODELS_DIR": str(tiny.comfy_models), "FOURDNEX_OUTPUT_DIR": str(root / "output"),
           "FOURDNEX_INPUT_DIR": str(root / "input"), "FOURDNEX_TEMP_DIR": str(root / "temp")}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    yield tiny, root
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def models(comfy_env):
    names = {key: Path(value).name for key, value in COMFY_FILES.items()}
    (model,) = call("FourDNeXModelLoader", model_name=names["transformer"], lora_name=names["lora"],
                    domain_embeddings="auto", lora_strength=1.0, precision="fp32")
    (vae,) = call("FourDNeXVAELoader", vae_name=names["vae"])
    (text_encoder,) = call("FourDNeXTextEncoderLoader", text_encoder_name=names["text_encoder"], precision="fp32")
    (clip_vision,) = call("FourDNeXCLIPVisionLoader", clip_name=names["clip_vision"], precision="fp32")
    return model, vae, text_encoder, clip_vision


@pytest.fixture(scope="module")
def image():
    # already at the generation size, so CLIP sees the same picture in the nodes and in the pipeline
    return fit_image(image_to_tensor(load_image(EXAMPLE)), HEIGHT, WIDTH).permute(1, 2, 0)[None]  # [1, H, W, 3]


def sample_latent(model, vae, text_encoder, clip_vision, image) -> dict:
    """Encode, then run 4DNeX Sampler on the test size; returns its LATENT."""
    (positive,) = call("FourDNeXTextEncode", text_encoder=text_encoder, text="a ball", pointmap_style=True)
    (negative,) = call("FourDNeXTextEncode", text_encoder=text_encoder, text="blurry", pointmap_style=False)
    (clip_output,) = call("FourDNeXCLIPVisionEncode", clip_vision=clip_vision, image=image)
    (latent,) = call("FourDNeXSampler", model=model, vae=vae, positive=positive, negative=negative,
                     clip_vision_output=clip_output, image=image, width=WIDTH, height=HEIGHT, length=FRAMES,
                     steps=STEPS, cfg=5.0, shift=3.0, scheduler="unipc", seed=7)
    return latent


@pytest.fixture(scope="module")
def generated(models, image):
    model, vae, _, _ = models
    latent = sample_latent(*models, image)
    rgb, point_maps, xyz_image = call("FourDNeXDecode", vae=vae, samples=latent)
    return latent, rgb, point_maps, xyz_image


@pytest.fixture(scope="module")
def optimized(generated):
    _, _, point_maps, _ = generated
    return call("FourDNeXPostOptimize", point_maps=point_maps, iterations=5, robust="cauchy", focal=0.0,
                camera_model="auto")


@pytest.fixture(scope="module")
def clouds(generated, optimized):
    cameras, _, _, registered = optimized
    (point_clouds,) = call("FourDNeXPointClouds", point_maps=registered, max_points=500, downsample="stride",
                           edge_rtol=0.1, outlier_std=2.0, use_mask=True, cameras=cameras)
    return point_clouds


def test_every_node_is_declared_completely():
    # the one place the node count is pinned (test_pack_import.py checks the pack registers these same names)
    assert len(N) == 21 and set(N) == set(nodes.NODE_DISPLAY_NAME_MAPPINGS)
    for name, cls in N.items():
        assert cls.CATEGORY.startswith("4DNeX/"), name
        assert cls.DESCRIPTION, name
        assert callable(getattr(cls, cls.FUNCTION)), name
        spec = cls.INPUT_TYPES()
        for section in ("required", "optional"):
            for input_name, declaration in spec.get(section, {}).items():
                assert len(declaration) == 2 and declaration[1].get("tooltip"), f"{name}.{input_name} needs a tooltip"
        if getattr(cls, "RETURN_NAMES", None):
            assert len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES), name


def test_loader_lists_come_from_the_model_folders(comfy_env):
    spec = N["FourDNeXModelLoader"].INPUT_TYPES()["required"]
    assert "wan2.1_i2v_480p_14B_bf16.safetensors" in spec["model_name"][0]
    assert spec["lora_name"][0] == ["none", "4dnex_lora.safetensors"]
    assert N["FourDNeXVAELoader"].INPUT_TYPES()["required"]["vae_name"][0] == ["wan_2.1_vae.safetensors"]


def test_missing_model_file_says_where_it_goes(comfy_env):
    with pytest.raises(FileNotFoundError, match="models/vae/"):
        call("FourDNeXVAELoader", vae_name="nope.safetensors")


def test_xyz_init_outputs_point_map_and_image():
    point_maps, picture = call("FourDNeXXYZInit", width=WIDTH, height=HEIGHT)
    assert point_maps.xyz.shape == (1, HEIGHT, WIDTH, 3) and picture.shape == (1, HEIGHT, WIDTH, 3)
    assert float(picture.min()) >= 0 and float(picture.max()) <= 1
    assert torch.allclose(point_maps.xyz[0, 0, 0], torch.tensor([-1.0, -1.0, 1.0]))  # top-left: far


def test_text_encode_matches_library_and_adds_the_suffix(models):
    _, _, text_encoder, _ = models
    (cond,) = call("FourDNeXTextEncode", text_encoder=text_encoder, text="a ball", pointmap_style=True)
    expected = encode_prompt(text_encoder.model, text_encoder.tokenizer, [with_pointmap_style("a ball")],
                             device="cpu", dtype=torch.float32)
    assert cond[0][0].shape == expected.shape and torch.equal(cond[0][0], expected)


def test_core_style_conditioning_is_padded_to_512():
    short = torch.randn(1, 7, 32)
    padded = text_embeds(conditioning(short))
    assert padded.shape == (1, 512, 32) and torch.equal(padded[:, :7], short) and not padded[:, 7:].any()
    with pytest.raises(ValueError, match="one prompt"):
        text_embeds(conditioning(short) + conditioning(short))


def test_node_pipeline_equals_library_pipeline(comfy_env, generated, image):
    """The node graph (our encoders, sampler, decode) reproduces FourDNeXPipeline on the same weights."""
    tiny, _ = comfy_env
    latent, rgb, point_maps, xyz_image = generated
    pipe = load_pipeline(ModelLocations(root=tiny.comfy_models, lora=tiny.comfy_lora))
    result = pipe(image, "a ball", negative_prompt="blurry", num_frames=FRAMES, height=HEIGHT, width=WIDTH,
                  settings=SamplingSettings(num_inference_steps=STEPS, seed=7), progress=False)
    assert latent["samples"].shape == result.latent.shape == (1, 16, 2, HEIGHT // 8, 2 * WIDTH // 8)
    assert rgb.shape == point_maps.xyz.shape == xyz_image.shape == (FRAMES, HEIGHT, WIDTH, 3)
    assert point_maps.rgb is rgb
    assert torch.allclose(latent["samples"], result.latent, atol=1e-5)
    assert torch.allclose(rgb, result.rgb, atol=1e-5) and torch.allclose(point_maps.xyz, result.xyz, atol=1e-5)


def test_sampler_accepts_core_types_and_is_seeded(models, image):
    model, vae, text_encoder, _ = models
    states = torch.randn(1, 257, 24, generator=torch.Generator().manual_seed(0))  # tiny CLIP width
    short = conditioning(torch.randn(1, 9, 32, generator=torch.Generator().manual_seed(1)))  # core: T < 512
    kwargs = dict(model=model, vae=vae, positive=short, clip_vision_output=ClipVisionOutput(states), image=image,
                  width=WIDTH, height=HEIGHT, length=FRAMES, steps=1, cfg=1.0, shift=3.0, scheduler="euler", seed=3)
    (first,) = call("FourDNeXSampler", **kwargs)
    (second,) = call("FourDNeXSampler", **kwargs)
    assert torch.equal(first["samples"], second["samples"])
    (init, _) = call("FourDNeXXYZInit", width=WIDTH, height=HEIGHT)
    (third,) = call("FourDNeXSampler", **kwargs, xyz_init=init)
    assert torch.equal(first["samples"], third["samples"])  # the default init is the sloped plane
    (wider, _) = call("FourDNeXXYZInit", width=2 * WIDTH, height=HEIGHT)  # resampled to the video size
    (fourth,) = call("FourDNeXSampler", **kwargs, xyz_init=wider)
    torch.testing.assert_close(fourth["samples"], first["samples"], atol=1e-5, rtol=0)


def test_sampler_keeps_the_aspect_of_the_image_by_default(models):
    # A square picture at the area of 48 x 32 is 32 x 32 (round(sqrt(1536)) = 39, floored to 32); "crop" fills 48 x 32.
    model, vae, _, _ = models
    square = torch.rand(1, 50, 50, 3, generator=torch.Generator().manual_seed(0))
    kwargs = dict(model=model, vae=vae, positive=conditioning(torch.zeros(1, 4, 32)),
                  clip_vision_output=ClipVisionOutput(torch.zeros(1, 257, 24)), image=square, width=WIDTH,
                  height=HEIGHT, length=FRAMES, steps=1, cfg=1.0, shift=3.0, scheduler="unipc", seed=0)
    (area,) = call("FourDNeXSampler", **kwargs)
    (cropped,) = call("FourDNeXSampler", **kwargs, resize="crop")
    assert area["samples"].shape[-2:] == (32 // 8, 2 * 32 // 8)
    assert cropped["samples"].shape[-2:] == (HEIGHT // 8, 2 * WIDTH // 8)


def test_sampler_errors_tell_what_to_do(models, image):
    model, vae, _, _ = models
    base = dict(model=model, vae=vae, positive=conditioning(torch.zeros(1, 4, 32)),
                clip_vision_output=ClipVisionOutput(torch.zeros(1, 257, 24)), image=image, width=WIDTH,
                height=HEIGHT, steps=1, cfg=1.0, shift=3.0, scheduler="euler", seed=0)
    with pytest.raises(ValueError, match="use 5 or 9"):
        call("FourDNeXSampler", **base, length=6)
    with pytest.raises(ValueError, match="cfg 5.0 needs a negative prompt.*empty text.*'negative'"):
        call("FourDNeXSampler", **{**base, "cfg": 5.0}, length=FRAMES)  # no silent sampling without guidance
    with pytest.raises(ValueError, match="area, crop, stretch"):
        call("FourDNeXSampler", **base, length=FRAMES, resize="fill")
    with pytest.raises(ValueError, match="release, diffusers"):
        call("FourDNeXSampler", **base, length=FRAMES, schedule="karras")
    with pytest.raises(ValueError, match="not a 4DNeX wide latent"):
        call("FourDNeXDecode", vae=vae, samples={"samples": torch.zeros(1, 4, 8, 8)})


def test_post_optimize_outputs(optimized):
    cameras, depth_picture, depth_mask, registered = optimized
    assert cameras.cams2world.shape == (FRAMES, 4, 4)
    assert cameras.K.shape in ((3, 3), (FRAMES, 3, 3))  # one K, or one per frame where the data chose a zoom
    assert depth_picture.shape == (FRAMES, HEIGHT, WIDTH, 3) and depth_mask.shape == (FRAMES, HEIGHT, WIDTH)
    assert float(depth_mask.min()) >= 0 and float(depth_mask.max()) <= 1
    assert isinstance(registered, PointMaps) and registered.xyz.shape == (FRAMES, HEIGHT, WIDTH, 3)


def test_preview_writes_viewer_file_glb_and_renders(comfy_env, clouds):
    _, root = comfy_env
    (rendered, model_file, camera_path), ui = call("FourDNeXPointCloudPreview", point_clouds=clouds, max_points=1000,
                                                   point_size=2.0, fps=12.0, render_width=0, render_height=0)
    assert camera_path is None  # no keyframes stored
    assert rendered.shape == (FRAMES, HEIGHT, WIDTH, 3)
    viewer = ui["fourdnex_points"][0]
    header, viewer_clouds = read_viewer_points(root / "temp" / viewer["subfolder"] / viewer["filename"])
    assert header["fps"] == 12.0 and len(viewer_clouds) == FRAMES and 0 < len(viewer_clouds[0]) <= 500
    assert np.allclose(viewer_clouds[0].positions, clouds.clouds()[0].positions)
    glb = root / "output" / model_file
    validate_glb(glb)
    assert ui["model_file"] == [model_file] and len(read_glb(glb)) == FRAMES


def test_preview_without_cameras_uses_an_overview_camera(generated):
    _, _, point_maps, _ = generated
    (point_clouds,) = call("FourDNeXPointClouds", point_maps=point_maps, max_points=0, downsample="stride",
                           edge_rtol=0.0, outlier_std=0.0, use_mask=True)
    (rendered, _, _), _ = call("FourDNeXPointCloudPreview", point_clouds=point_clouds, max_points=1000, point_size=2.0,
                            fps=24.0, render_width=32, render_height=16)
    assert rendered.shape == (FRAMES, 16, 32, 3) and float(rendered.max()) > 0  # the points are in view
    with pytest.raises(ValueError, match="Post-Optimize"):
        call("FourDNeXRenderNovelView", point_clouds=point_clouds, trajectory="orbit", num_views=3, arc_degrees=30.0,
             distance=0.3, offset_x=0.1, offset_y=0.0, offset_z=0.0, time_frame=-1, width=0, height=0, point_size=1)


def test_save_then_load_scene_round_trip(comfy_env, clouds, optimized):
    _, root = comfy_env
    (scene_file,), ui = call("FourDNeXSave", point_clouds=clouds, filename_prefix="4dnex/test", save_scene=True,
                             save_ply=True, save_glb=True, save_cameras=True, fps=24.0)
    assert scene_file == "4dnex/test_00001_.npz"
    out = root / "output" / "4dnex"
    assert {"4dnex/test_00001_.npz", "4dnex/test_00001_.glb", "4dnex/test_00001_cameras.json"} <= set(ui["text"])
    assert len(read_ply(out / "test_00001_ply" / "frame_00000.ply")) == len(clouds.clouds()[0])
    assert json.loads((out / "test_00001_cameras.json").read_text())["convention"] == "opencv"
    scene = load_scene(out / "test_00001_.npz")
    assert scene.K is not None and scene.cams2world.shape == (FRAMES, 4, 4)
    (again,), _ = call("FourDNeXSave", point_clouds=clouds, filename_prefix="4dnex/test", save_scene=True,
                       save_ply=False, save_glb=False, save_cameras=False, fps=24.0)
    assert again == "4dnex/test_00002_.npz"  # never overwrites

    point_maps, cameras, rgb = call("FourDNeXLoadScene", scene_file=scene_file)
    assert torch.allclose(point_maps.xyz, torch.from_numpy(scene.xyz))
    assert torch.allclose(cameras.K, optimized[0].K.float()) and rgb.shape == (FRAMES, HEIGHT, WIDTH, 3)
    with pytest.raises(FileNotFoundError, match="4DNeX Save"):
        call("FourDNeXLoadScene", scene_file="4dnex/missing.npz")


@pytest.mark.parametrize("prefix", ["../escape", "4dnex/../../escape", "/etc/passwd", "C:/x", "a/../../b", "", "dir/"])
def test_path_traversal_prefixes_are_refused(comfy_env, clouds, prefix):
    with pytest.raises(ValueError, match="output folder|names no file"):
        call("FourDNeXSave", point_clouds=clouds, filename_prefix=prefix, save_scene=True, save_ply=False,
             save_glb=False, save_cameras=False, fps=24.0)
    with pytest.raises(ValueError):
        call("FourDNeXLoadScene", scene_file=prefix)


def test_safe_output_folder_allows_nested_names(tmp_path):
    folder, name = safe_output_folder(tmp_path, "a/b/scene")
    assert folder == (tmp_path / "a" / "b").resolve() and name == "scene"


@pytest.fixture(scope="module")
def synthetic_clouds():
    """Point clouds of a post-optimized synthetic scene (ground, objects, sky dome all around): the
    tiny random model's point maps hold no geometry that other frames' cameras see."""
    synthetic = make_synthetic_scene(num_frames=FRAMES, height=HEIGHT, width=WIDTH)
    point_maps = PointMaps(xyz=synthetic.xyz, rgb=synthetic.rgb)
    cameras, _, _, registered = call("FourDNeXPostOptimize", point_maps=point_maps, iterations=20, robust="cauchy",
                                     focal=0.0, camera_model="auto")
    (point_clouds,) = call("FourDNeXPointClouds", point_maps=registered, max_points=0, downsample="stride",
                           edge_rtol=0.1, outlier_std=2.0, use_mask=True, cameras=cameras)
    return point_clouds


@pytest.mark.parametrize("trajectory", ["orbit", "dolly", "path", "path-offset"])
def test_render_novel_view(synthetic_clouds, trajectory):
    frames, holes, depth = call("FourDNeXRenderNovelView", point_clouds=synthetic_clouds, trajectory=trajectory,
                                num_views=3, arc_degrees=40.0, distance=0.3, offset_x=0.1, offset_y=0.0,
                                offset_z=0.0, time_frame=-1, width=32, height=16, point_size=2)
    views = FRAMES if trajectory.startswith("path") else 3
    assert frames.shape == (views, 16, 32, 3) and float(frames.min()) >= 0 and float(frames.max()) <= 1
    # every view shows the scene: the share of pixels a point landed on (the background is black) is
    # 0.77-0.85 per view here; an empty or misplaced render is 0
    coverage = (frames > 0).any(dim=-1).float().mean(dim=(1, 2))
    assert float(coverage.min()) > 0.5, coverage.tolist()
    # MASK [B, H, W] (1 = hole, what WanVaceToVideo's control_masks regenerates) and depth IMAGE [B, H, W, 3],
    # both lined up with the frames: holes are exactly the black background, and have no depth
    assert holes.shape == (views, 16, 32) and holes.dtype == torch.float32
    assert set(holes.unique().tolist()) <= {0.0, 1.0} and float(holes.mean()) < 0.5
    assert torch.equal(holes == 1, (frames == 0).all(dim=-1))  # no point of this scene is pure black
    assert depth.shape == (views, 16, 32, 3) and depth.dtype == torch.float32
    assert float(depth.min()) >= 0 and float(depth.max()) == 1.0
    assert torch.equal(depth[..., 0], depth[..., 2]) and bool((depth[holes == 1] == 0).all())


def test_render_fills_holes_with_the_background_grey(synthetic_clouds):
    """background 0.5 (the grey VACE fills) paints exactly the hole pixels; the points and masks stay the same."""
    args = dict(point_clouds=synthetic_clouds, trajectory="orbit", num_views=2, arc_degrees=40.0, distance=0.3,
                offset_x=0.1, offset_y=0.0, offset_z=0.0, time_frame=-1, width=48, height=16, point_size=1)
    black, holes, _ = call("FourDNeXRenderNovelView", **args)
    grey, grey_holes, _ = call("FourDNeXRenderNovelView", **args, background=0.5)
    assert torch.equal(grey_holes, holes) and float(holes.mean()) > 0.3  # letterbox bands at least
    assert bool((grey[holes == 1] == 0.5).all()) and bool((black[holes == 1] == 0).all())
    assert torch.equal(grey[holes == 0], black[holes == 0])


def test_render_frozen_time_and_bad_frame(clouds):
    args = dict(point_clouds=clouds, trajectory="orbit", num_views=2, arc_degrees=10.0, distance=0.3, offset_x=0.1,
                offset_y=0.0, offset_z=0.0, width=0, height=0, point_size=1)
    frames, holes, depth = call("FourDNeXRenderNovelView", **args, time_frame=0)
    assert frames.shape == (2, HEIGHT, WIDTH, 3) and holes.shape == (2, HEIGHT, WIDTH)
    assert depth.shape == (2, HEIGHT, WIDTH, 3)
    with pytest.raises(ValueError, match="time_frame"):
        call("FourDNeXRenderNovelView", **args, time_frame=FRAMES)


def _keyframe_render(clouds, keyframes_text, trajectory, num_views):
    """Preview with the viewer's keyframe text, then Render Novel View along its camera_path (frame 0)."""
    (_, _, camera_path), _ = call("FourDNeXPointCloudPreview", point_clouds=clouds, max_points=1000, point_size=2.0,
                                  fps=24.0, render_width=0, render_height=0, camera_keyframes=keyframes_text)
    return call("FourDNeXRenderNovelView", point_clouds=clouds, trajectory=trajectory, num_views=num_views,
                arc_degrees=30.0, distance=0.3, offset_x=0.1, offset_y=0.0, offset_z=0.0, time_frame=0, width=0,
                height=0, point_size=2, camera_path=camera_path)


def test_render_follows_the_viewer_keyframes(synthetic_clouds):
    from fourdnex_core.geometry.keyframes import keyframes_json

    scene = synthetic_clouds.scene
    K, poses = torch.from_numpy(scene.K).double(), torch.from_numpy(scene.cams2world).double()
    K = K if K.ndim == 2 else K[0]
    assert abs(K[0, 0] - K[1, 1]) < 1e-6 * K[1, 1] and abs(K[1, 2] - (HEIGHT - 1) / 2) < 1e-6  # a viewer camera
    fov = torch.rad2deg(2 * torch.atan(HEIGHT / 2 / K[1, 1]))
    # a keyframe at the scene's first camera, with its field of view, sees what the recovered path's first view does
    (path_frames, _, _) = call("FourDNeXRenderNovelView", point_clouds=synthetic_clouds, trajectory="path",
                               num_views=0, arc_degrees=30.0, distance=0.3, offset_x=0.1, offset_y=0.0, offset_z=0.0,
                               time_frame=0, width=0, height=0, point_size=2)
    text = keyframes_json(poses[[0, FRAMES - 1]], fov.expand(2))
    fixed, fixed_holes, _ = _keyframe_render(synthetic_clouds, text, "viewer-view", 3)
    assert fixed.shape == (3, HEIGHT, WIDTH, 3) and torch.equal(fixed[0], fixed[2])
    torch.testing.assert_close(fixed[0], path_frames[0])
    assert float(fixed_holes[0].mean()) < 0.5
    # the interpolated path starts at the first keyframe and ends at the second, the scene's last camera
    moving, _, _ = _keyframe_render(synthetic_clouds, text, "viewer-path", 4)
    torch.testing.assert_close(moving[0], path_frames[0])
    torch.testing.assert_close(moving[3], path_frames[FRAMES - 1])
    assert not torch.equal(moving[1], moving[0]) and not torch.equal(moving[1], moving[3])


def test_viewer_keyframes_bad_text_and_missing_path(synthetic_clouds):
    with pytest.raises(ValueError, match="not JSON.*clear views"):
        _keyframe_render(synthetic_clouds, '{"keyframes": [', "viewer-path", 3)
    with pytest.raises(ValueError, match="needs camera keyframes.*add view"):
        _keyframe_render(synthetic_clouds, "", "viewer-view", 3)


def test_memory_options_node_gives_the_same_latent_with_block_swap(comfy_env, models, image, generated):
    _, vae, text_encoder, clip_vision = models
    names = {key: Path(value).name for key, value in COMFY_FILES.items()}
    (memory,) = call("FourDNeXMemoryOptions", blocks_to_swap=1, prefetch=True, fp8="off", attention="math",
                     compile=False, step_cache_threshold=0.0, vae_tiling=False, vae_tile_size=256,
                     vae_tile_overlap=64)
    assert memory.blocks_to_swap == 1 and memory.attention == "math"
    (swapped,) = call("FourDNeXModelLoader", model_name=names["transformer"], lora_name=names["lora"],
                      domain_embeddings="auto", lora_strength=1.0, precision="fp32", memory=memory)
    assert swapped.memory is memory
    latent = sample_latent(swapped, vae, text_encoder, clip_vision, image)
    # block swap is exact; the math attention kernel differs from SDPA by float rounding only
    torch.testing.assert_close(latent["samples"], generated[0]["samples"], rtol=1e-4, atol=1e-4)
    assert not swapped.transformer._forward_pre_hooks and not swapped.transformer.blocks[0]._forward_pre_hooks
    (auto,) = call("FourDNeXMemoryOptions", blocks_to_swap=-1, prefetch=True, fp8="weights", attention="sdpa",
                   compile=False, step_cache_threshold=0.1, vae_tiling=True, vae_tile_size=128, vae_tile_overlap=32)
    assert (auto.blocks_to_swap, auto.fp8, auto.vae_tiling) == ("auto", "weights", True)
    (tiled_vae,) = call("FourDNeXVAELoader", vae_name=names["vae"], memory=auto)
    assert tiled_vae.use_tiling


def test_sampler_refuses_a_job_too_big_for_the_machine_before_encoding(models, image):
    model, vae, _, _ = models
    states = torch.zeros(1, 257, 24)
    positive = conditioning(torch.zeros(1, 9, 32))
    with pytest.raises(ValueError, match=r"100001 frames at .* need at least .* GiB .*at most \d+ frames can fit"):
        call("FourDNeXSampler", model=model, vae=vae, positive=positive, clip_vision_output=ClipVisionOutput(states),
             image=image, width=1024, height=1024, length=100001, steps=1, cfg=1.0, shift=3.0, scheduler="euler",
             seed=0)
