"""LowVramOptions: validation, recommended settings, and the combined path on the CPU."""

import pytest
import torch

from fourdnex_core.loading.fp8 import FP8Linear
from fourdnex_core.lowvram.options import (
    RECOMMENDED,
    LowVramOptions,
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
