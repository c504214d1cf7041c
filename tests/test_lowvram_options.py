"""LowVramOptions: validation, recommended settings, the combined path on the CPU, and its three faces
(node, CLI flags, the trainer's [memory]) against the one declaration."""

import argparse
import dataclasses
from pathlib import Path

import pytest
import torch

from fourdnex_core.cli.memory_args import add_memory_arguments, memory_options
from fourdnex_core.loading.fp8 import FP8Linear
from fourdnex_core.lowvram.options import (
    FACES,
    RECOMMENDED,
    LowVramOptions,
    options_of,
    prepare_transformer,
    recommended_options,
    sampling_transformer,
)
from fourdnex_core.lowvram.step_cache import StepCache
from fourdnex_core.sampler import Conditioning, SamplingSettings, sample
from fourdnex_core.transformer import FourDNeXTransformer3DModel
from tiny_configs import TINY_TRANSFORMER


def _model():
    torch.manual_seed(0)
    return FourDNeXTransformer3DModel(**TINY_TRANSFORMER).eval()


@torch.no_grad()
def _sample(transformer, steps=6):
    generator = torch.Generator().manual_seed(7)
    conditioning = Conditioning(condition=torch.randn(1, 20, 2, 4, 8, generator=generator),
                                prompt_embeds=torch.randn(1, 512, 32, generator=generator),
                                negative_prompt_embeds=torch.randn(1, 512, 32, generator=generator),
                                image_embeds=torch.randn(1, 257, 24, generator=generator))
    return sample(transformer, conditioning, SamplingSettings(num_inference_steps=steps), progress=False)


def test_exact_options_reproduce_the_plain_loop():
    plain = _sample(_model())
    options = LowVramOptions(blocks_to_swap=2, attention="sdpa", offload="cpu")
    assert options.exact
    prepared = prepare_transformer(_model(), options, "cpu")
    assert prepared.block_swap is not None and prepared.block_swap.blocks_to_swap == 2
    transformer = sampling_transformer(prepared.model, options, 6)
    assert transformer is prepared.model
    assert torch.equal(_sample(transformer), plain)


def test_approximate_options_are_applied_in_order():
    options = LowVramOptions(blocks_to_swap="auto", fp8="weights", attention="math", step_cache_threshold=0.2)
    assert not options.exact
    prepared = prepare_transformer(_model(), options, "cpu")
    assert prepared.block_swap is None  # "auto" on the CPU: nothing to swap
    assert all(isinstance(m, FP8Linear) for m in prepared.model.blocks.modules() if isinstance(m, torch.nn.Linear))
    assert prepared.model.blocks[0].attn1.processor._attention_backend.value == "_native_math"
    transformer = sampling_transformer(prepared.model, options, 6)
    assert isinstance(transformer, StepCache)
    plain = _sample(_model())
    assert (_sample(transformer) - plain).abs().max() < 0.2


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (dict(blocks_to_swap=-1), "blocks_to_swap"),
        (dict(fp8="int4"), "fp8"),
        (dict(attention="sage2"), "sdpa"),
        (dict(compile=True, compile_mode="reduce-overhead", blocks_to_swap=4), "block swap"),
        (dict(step_cache_threshold=-0.1), "step_cache_threshold"),
        (dict(vae_tile_size=250), "multiple of 8"),
        (dict(offload="disk"), "keep, cpu, free"),
    ],
)
def test_invalid_options_name_the_fix(fields, message):
    with pytest.raises(ValueError, match=message):
        LowVramOptions(**fields)


def test_recommendations_follow_gpu_memory():
    assert recommended_options(23.6) == RECOMMENDED[24]
    assert recommended_options(79.2) == RECOMMENDED[80]
    assert recommended_options(47.5) == RECOMMENDED[48]
    assert recommended_options(200) == RECOMMENDED[80]
    assert RECOMMENDED[24].fp8 != "off" and RECOMMENDED[24].blocks_to_swap == "auto"
    with pytest.raises(ValueError, match="24 GB"):
        recommended_options(12)


# ---------------------------------------------------------------- one declaration, three faces


def test_every_option_is_in_each_face_or_says_why_not():
    # A new LowVramOptions field must be declared with option(): shown by the node, the CLI and the
    # trainer's [memory], or given a reason per face it is left out of.
    for field in dataclasses.fields(LowVramOptions):
        assert field.metadata.get("help"), f"{field.name} is not declared with option() (no help text)"
        shown = {face for face in FACES if field in options_of(face)}
        reasons = set(field.metadata["left_out"])
        assert shown | reasons == set(FACES) and not shown & reasons, (field.name, shown, reasons)
    assert "embedding_cache" not in {field.name for field in dataclasses.fields(LowVramOptions)}


def test_memory_options_node_shows_the_declared_options_with_their_help():
    import nodes

    node = nodes.NODE_CLASS_MAPPINGS["FourDNeXMemoryOptions"]
    inputs = node.INPUT_TYPES()["required"]
    assert list(inputs) == [field.name for field in options_of("node")]
    for field in options_of("node"):
        kind, settings = inputs[field.name]
        assert settings["tooltip"] == field.metadata["help"] and settings["default"] == field.default
        assert kind == (list(field.metadata["choices"]) if field.metadata["choices"] else kind)
    defaults = {name: settings["default"] for name, (_, settings) in inputs.items()}
    assert node().make(**defaults) == (LowVramOptions(),)
    (options,) = node().make(**{**defaults, "blocks_to_swap": -1, "step_cache_threshold": 0.2})
    assert options.blocks_to_swap == "auto" and options.step_cache_threshold == 0.2


def test_cli_flags_are_the_declared_options_with_their_help():
    parser = argparse.ArgumentParser()
    add_memory_arguments(parser)
    actions = {action.dest: action for action in parser._actions if action.dest != "help"}
    declared = {field.name: field for field in options_of("cli")}
    assert set(actions) == set(declared) | {"low_vram", "embedding_cache"}
    for name, field in declared.items():
        assert actions[name].option_strings[0] == field.metadata["cli"]
        assert actions[name].help.replace("%%", "%") == field.metadata["help"]
    args = parser.parse_args(["--blocks-to-swap", "auto", "--no-prefetch", "--vae-tile-size", "128",
                              "--step-cache", "0.1", "--offload", "cpu"])
    options = memory_options(args, torch.device("cpu"))
    assert options == LowVramOptions(blocks_to_swap="auto", prefetch=False, vae_tile_size=128,
                                      step_cache_threshold=0.1, offload="cpu")
    assert memory_options(parser.parse_args([]), torch.device("cpu")) == LowVramOptions()


def test_trainer_memory_section_has_the_declared_keys_documented():
    from fourdnex_train.config import MemoryConfig

    trainer_only = {"offload_activations"}
    keys = {field.name: field for field in dataclasses.fields(MemoryConfig)}
    declared = {field.name: field for field in options_of("train")}
    assert set(keys) - trainer_only == set(declared)
    # the same defaults, but for the trainer's larger activation reserve (a step keeps more than inference)
    differing = {name for name, field in declared.items() if keys[name].default != field.default}
    assert differing == {"activation_reserve_gb"}
    readme = (Path(__file__).resolve().parents[1] / "fourdnex_train" / "README.md").read_text(encoding="utf-8")
    rows = [line for line in readme.splitlines() if line.startswith("| `memory.")]
    for name in keys:
        assert any(f"`memory.{name}`" in row or f"`{name}`" in row for row in rows), f"[memory] {name} undocumented"
    config = MemoryConfig(blocks_to_swap=-1, fp8="weights", vae_tiling=True)
    assert config.low_vram_options() == LowVramOptions(blocks_to_swap="auto", activation_reserve_gb=10.0,
                                                       fp8="weights", vae_tiling=True)
