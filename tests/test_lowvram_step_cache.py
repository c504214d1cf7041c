"""Step cache: exact at threshold 0, skips only middle steps, per-stream residuals, restores the model."""

import pytest
import torch

from fourdnex_core.lowvram.block_swap import BlockSwap
from fourdnex_core.lowvram.step_cache import StepCache, wan_modulated_input
from fourdnex_core.sampler import Conditioning, SamplingSettings, sample
from fourdnex_core.transformer import FourDNeXTransformer3DModel
from tiny_configs import TINY_TRANSFORMER

LATENT = (1, 16, 2, 4, 8)
STEPS = 12


def _model():
    torch.manual_seed(0)
    return FourDNeXTransformer3DModel(**TINY_TRANSFORMER).eval()


def _conditioning():
    generator = torch.Generator().manual_seed(2)
    return Conditioning(condition=torch.randn(1, 20, *LATENT[2:], generator=generator),
                        prompt_embeds=torch.randn(1, 512, 32, generator=generator),
                        negative_prompt_embeds=torch.randn(1, 512, 32, generator=generator),
                        image_embeds=torch.randn(1, 257, 24, generator=generator))


@torch.no_grad()
def _sample(transformer, steps=STEPS):
    return sample(transformer, _conditioning(), SamplingSettings(num_inference_steps=steps), progress=False)


def _count_block_calls(model):
    calls = []
    model.blocks[0].register_forward_pre_hook(lambda module, args: calls.append(1))
    return calls


def test_threshold_zero_is_exactly_the_plain_loop():
    model = _model()
    plain = _sample(model)
    cache = StepCache(model, STEPS, threshold=0.0)
    assert torch.equal(_sample(cache), plain)
    assert cache.stats.skipped == [] and cache.stats.computed == list(range(STEPS))


def test_skips_middle_steps_only_and_stays_close():
    model = _model()
    plain = _sample(model)
    calls = _count_block_calls(model)
    cache = StepCache(model, STEPS, threshold=0.15)
    cached = _sample(cache)
    stats = cache.stats
    assert 0 < stats.skipped_count < STEPS - 2
    assert 0 in stats.computed and STEPS - 1 in stats.computed
    assert sorted(stats.computed + stats.skipped) == list(range(STEPS))
    assert len(calls) == 2 * len(stats.computed)  # CFG: two streams per computed step, none on skipped ones
    deviation = (cached - plain).abs().max().item()
    assert 0 < deviation < 0.1  # measured 0.03 for this model (see BENCHMARKS.md)


def test_higher_threshold_skips_more():
    model = _model()
    skipped = []
    for threshold in (0.05, 0.15, 1.0):
        cache = StepCache(model, STEPS, threshold=threshold)
        _sample(cache)
        skipped.append(cache.stats.skipped_count)
    assert skipped[0] < skipped[1] < skipped[2]
    capped = StepCache(model, STEPS, threshold=1.0, max_consecutive_skips=2)
    _sample(capped)
    runs, run = [], 0
    for step in range(STEPS):
        run = run + 1 if step in capped.stats.skipped else 0
        runs.append(run)
    assert max(runs) == 2


def test_each_stream_reuses_its_own_residual():
    # With everything between the first and last step skipped, the positive and negative passes
    # must still differ (each adds its own residual), or CFG would collapse.
    model = _model()
    cache = StepCache(model, 4, threshold=1e9)
    inputs = dict(hidden_states=torch.randn(1, 36, *LATENT[2:]), encoder_hidden_states_image=torch.randn(1, 257, 24),
                  return_dict=False)
    text = [torch.randn(1, 512, 32), torch.randn(1, 512, 32)]
    with torch.no_grad():
        for step, t in enumerate([900.0, 600.0, 300.0]):
            outputs = [cache(timestep=torch.tensor([t]), encoder_hidden_states=e, **inputs)[0] for e in text]
            if step > 0:
                reference = [model(timestep=torch.tensor([t]), encoder_hidden_states=e, **inputs)[0] for e in text]
                assert not torch.equal(outputs[0], outputs[1])
                assert not torch.equal(outputs[0], reference[0])  # reused, not recomputed
    assert cache.stats.skipped == [1, 2]


def test_new_run_resets_and_too_many_steps_fail():
    model = _model()
    cache = StepCache(model, STEPS, threshold=0.15)
    first = _sample(cache)
    assert torch.equal(_sample(cache), first)  # the schedule restarted: state reset automatically
    with pytest.raises(ValueError, match="num_inference_steps"):
        _sample(StepCache(model, STEPS - 2, threshold=0.1))


def test_model_is_restored_after_every_call():
    model = _model()
    blocks = model.blocks
    cache = StepCache(model, 2)
    with pytest.raises(RuntimeError):
        cache(hidden_states=torch.randn(1, 35, *LATENT[2:]), timestep=torch.tensor([1.0]),
              encoder_hidden_states=torch.randn(1, 512, 32), encoder_hidden_states_image=torch.randn(1, 257, 24))
    assert model.blocks is blocks
    assert list(model.state_dict()) == list(_model().state_dict())


def test_indicator_is_the_blocks_own_modulated_input():
    model = _model()
    captured = {}
    model.blocks[0].register_forward_pre_hook(lambda m, args: captured.update(block=args))
    model.blocks[0].attn1.register_forward_pre_hook(lambda m, args: captured.update(attn=args[0]))
    with torch.no_grad():
        model(torch.randn(1, 36, *LATENT[2:]), torch.tensor([500.0]), torch.randn(1, 512, 32),
              torch.randn(1, 257, 24))
    hidden, _, temb, _ = captured["block"]
    ours = wan_modulated_input(model.blocks[0], hidden, temb).type_as(hidden)
    assert torch.equal(ours, captured["attn"])


def test_works_with_block_swap():
    plain = StepCache(_model(), STEPS, threshold=0.15)
    expected = _sample(plain)
    model = _model()
    BlockSwap(model, 1, "cpu")
    swapped = StepCache(model, STEPS, threshold=0.15)
    assert torch.equal(_sample(swapped), expected)
    assert swapped.stats.skipped == plain.stats.skipped


def test_bad_settings():
    with pytest.raises(ValueError, match="warmup_steps"):
        StepCache(_model(), 10, warmup_steps=0)
    with pytest.raises(ValueError, match="threshold"):
        StepCache(_model(), 10, threshold=-1)
    with pytest.raises(TypeError, match="Wan"):
        StepCache(torch.nn.Linear(2, 2), 10)
