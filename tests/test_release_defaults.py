"""Every default a user meets is the 4DNeX release's call (METHOD.md, "Sampling"): these fail on drift.

The release (3DTopia/4DNeX on diffusers 0.34): 49 frames, the input's aspect ratio at the area of
480 x 720 without a crop, 50 UniPC steps on diffusers 0.34's flow sigmas at shift 3, CFG 5 against
the empty negative prompt, seed 42, " POINTMAP_STYLE." on the prompt, the LoRA at its training scale.
"""

import dataclasses
import inspect
import json
from pathlib import Path

import pytest

import nodes
from fourdnex_core.cli import build_parser
from fourdnex_core.cli.generate import apply_preset
from fourdnex_core.image_io import fit_image, generation_size
from fourdnex_core.pipeline import FourDNeXPipeline
from fourdnex_core.presets import FAST, PRESETS, RELEASE, WAN_NEGATIVE_PROMPT
from fourdnex_core.sampler import SamplingSettings
from fourdnex_core.schedulers import flow_sigmas, scheduler_for

THE_RELEASE = dict(frames=49, height=480, width=720, resize="area", steps=50, cfg=5.0, shift=3.0, sampler="unipc",
                   schedule="release", seed=42, negative_prompt="", pointmap_style=True, lora_strength=1.0)
WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
GENERATING_WORKFLOWS = ("1_image_to_4d", "2_image_to_4d_core_encoders", "4_novel_view_orbit_video",
                        "5_image_to_4d_low_vram")


def test_the_release_preset_is_the_releases_call():
    assert dataclasses.asdict(RELEASE) == THE_RELEASE
    assert dataclasses.asdict(FAST) == {**THE_RELEASE, "frames": 9, "height": 240, "width": 368, "steps": 20}
    assert set(PRESETS) == {"release", "fast"}


def test_sampling_settings_default_to_the_release():
    assert SamplingSettings() == RELEASE.sampling_settings()
    assert dataclasses.asdict(SamplingSettings()) == dict(num_inference_steps=50, guidance_scale=5.0, flow_shift=3.0,
                                                          sampler="unipc", seed=42, schedule="release")


def test_library_functions_default_to_the_release():
    signature = inspect.signature(FourDNeXPipeline.__call__).parameters
    defaults = {name: signature[name].default for name in ("prompt", "negative_prompt", "num_frames", "height",
                                                           "width", "resize", "pointmap_style")}
    assert defaults == dict(prompt="", negative_prompt="", num_frames=49, height=480, width=720, resize="area",
                            pointmap_style=True)
    assert signature["settings"].default is None  # -> SamplingSettings(), checked above
    assert inspect.signature(fit_image).parameters["mode"].default == "area"
    assert inspect.signature(generation_size).parameters["mode"].default == "area"
    assert inspect.signature(flow_sigmas).parameters["schedule"].default == "release"
    assert inspect.signature(scheduler_for).parameters["schedule"].default == "release"


def _generate_args(*extra):
    return apply_preset(build_parser().parse_args(["generate", "in.png", "--out", "out", *extra]))


def test_cli_defaults_are_the_release_preset():
    args = _generate_args()
    assert args.preset == "release" and not args.no_pointmap_style and args.prompt == ""
    assert {name: getattr(args, name) for name in THE_RELEASE if name != "pointmap_style"} == \
        {name: value for name, value in THE_RELEASE.items() if name != "pointmap_style"}


def test_cli_fast_preset_and_explicit_flags_win():
    args = _generate_args("--preset", "fast", "--steps", "7", "--cfg", "1", "--resize", "crop")
    assert (args.frames, args.height, args.width, args.seed) == (9, 240, 368, 42)
    assert (args.steps, args.cfg, args.resize, args.schedule) == (7, 1.0, "crop", "release")
    assert _generate_args("--schedule", "diffusers").schedule == "diffusers"


def test_cli_names_wans_negative_prompt_and_keeps_an_empty_one():
    assert _generate_args("--negative-prompt", "wan").negative_prompt == WAN_NEGATIVE_PROMPT
    assert _generate_args("--negative-prompt", "").negative_prompt == ""
    assert _generate_args("--negative-prompt", "blurry").negative_prompt == "blurry"


def test_demo_is_the_release_call_at_a_tiny_size():
    args = apply_preset(build_parser().parse_args(["demo", "--out", "out"]))
    assert (args.frames, args.height, args.width, args.steps) == (9, 64, 96, 4)
    assert (args.cfg, args.negative_prompt, args.resize, args.schedule, args.sampler, args.seed) == \
        (5.0, "", "area", "release", "unipc", 42)


def _defaults(node_type):
    spec = nodes.NODE_CLASS_MAPPINGS[node_type].INPUT_TYPES()
    return {name: declaration[1].get("default") for section in ("required", "optional")
            for name, declaration in spec.get(section, {}).items() if len(declaration) > 1}


def test_node_defaults_are_the_release():
    sampler = _defaults("FourDNeXSampler")
    assert {name: sampler[name] for name in ("width", "height", "length", "steps", "cfg", "shift", "scheduler",
                                             "seed", "resize", "schedule")} == \
        dict(width=720, height=480, length=49, steps=50, cfg=5.0, shift=3.0, scheduler="unipc", seed=42,
             resize="area", schedule="release")
    text = _defaults("FourDNeXTextEncode")
    assert text["text"] == "" and text["pointmap_style"] is True
    assert _defaults("FourDNeXModelLoader")["lora_strength"] == RELEASE.lora_strength
    assert _defaults("FourDNeXXYZInit") == {"width": 720, "height": 480}


@pytest.mark.parametrize("name", GENERATING_WORKFLOWS)
def test_workflows_guide_against_the_empty_negative(name):
    workflow = json.loads((WORKFLOWS / f"{name}.json").read_text(encoding="utf-8"))
    by_id = {node["id"]: node for node in workflow["nodes"]}
    links = {link[0]: link for link in workflow["links"]}
    (sampler,) = [node for node in workflow["nodes"] if node["type"] == "FourDNeXSampler"]
    values = sampler["widgets_values"]
    assert values[4] > 1 and values[9:] == ["area", "release"]  # cfg, resize, schedule
    negative = {i["name"]: i for i in sampler["inputs"]}["negative"]
    assert negative["link"] is not None, f"{name}: the sampler's negative is not connected"
    encoder = by_id[links[negative["link"]][1]]
    if encoder["type"] == "FourDNeXTextEncode":
        assert encoder["widgets_values"] == ["", False]  # the empty text, no POINTMAP_STYLE. suffix
    else:
        assert encoder["type"] == "CLIPTextEncode" and encoder["widgets_values"] == [""]


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory):
    from fourdnex_core.model_set import ModelLocations, load_pipeline
    from fourdnex_core.tiny import make_tiny_models

    tiny = make_tiny_models(tmp_path_factory.mktemp("tiny"))
    return load_pipeline(ModelLocations(root=tiny.comfy_models, lora=tiny.comfy_lora))


def test_the_pipeline_guides_against_the_encoded_empty_prompt(tiny_pipeline, monkeypatch):
    import torch

    seen = []
    encode = tiny_pipeline.encode_text

    def recording(prompt, negative_prompt, **kwargs):
        result = encode(prompt, negative_prompt, **kwargs)
        seen.append((negative_prompt, result[1]))
        return result

    monkeypatch.setattr(tiny_pipeline, "encode_text", recording)
    square = torch.rand(1, 50, 50, 3, generator=torch.Generator().manual_seed(0))
    result = tiny_pipeline(square, "a ball", num_frames=5, height=32, width=48,
                           settings=SamplingSettings(num_inference_steps=1), progress=False)
    ((negative_text, negative_embeds),) = seen
    assert negative_text == "" and negative_embeds is not None and negative_embeds.shape[:2] == (1, 512)
    assert result.rgb.shape == (5, 32, 32, 3)  # the square keeps its aspect at the area of 32 x 48
    with pytest.raises(ValueError, match="needs a negative prompt"):
        tiny_pipeline(square, "a ball", negative_prompt=None, num_frames=5, height=32, width=48,
                      settings=SamplingSettings(num_inference_steps=1), progress=False)
