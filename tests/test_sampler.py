"""The denoising loop's math, hooks and determinism, and the condition/decode stages."""

import pytest
import torch
from diffusers import AutoencoderKLWan

from fourdnex_core.conditioning import encode_condition
from fourdnex_core.decode import decode_wide_latent
from fourdnex_core.representation import XYZ_LATENT_MEAN, xyz_init_map
from fourdnex_core.sampler import Conditioning, SamplingCancelled, SamplingSettings, initial_noise, sample
from fourdnex_core.schedulers import flow_sigmas, flow_timesteps, make_scheduler
from fourdnex_core.transformer import FourDNeXTransformer3DModel
from fourdnex_core.vae_io import decode_latent
from tiny_configs import TINY_TRANSFORMER, TINY_VAE

LATENT = (1, 16, 2, 4, 8)


class ConstantVelocity(torch.nn.Module):
    """Predicts ``cond`` for the positive prompt and ``uncond`` for the negative one."""

    def __init__(self, cond: float, uncond: float):
        super().__init__()
        self.cond, self.uncond, self.calls = cond, uncond, 0

    def forward(self, hidden_states, timestep, encoder_hidden_states, encoder_hidden_states_image, return_dict):
        self.calls += 1
        assert hidden_states.shape[1] == 36 and encoder_hidden_states.shape[1] == 512
        value = self.cond if encoder_hidden_states[0, 0, 0] > 0 else self.uncond
        return (torch.full((hidden_states.shape[0], 16, *hidden_states.shape[2:]), value),)


def _conditioning(negative=True, text_dim=32, image_dim=24):
    return Conditioning(
        condition=torch.zeros(1, 20, *LATENT[2:]),
        prompt_embeds=torch.ones(1, 512, text_dim),
        negative_prompt_embeds=-torch.ones(1, 512, text_dim) if negative else None,
        image_embeds=torch.zeros(1, 257, image_dim),
    )


def test_euler_integrates_the_flow_from_noise_to_data():
    # x_0 = x_s + (0 - s) * v for a constant velocity v: the sigmas run from the first one, s, to 0.
    model = ConstantVelocity(cond=0.25, uncond=0.25)
    out = sample(model, _conditioning(negative=False),
                 SamplingSettings(num_inference_steps=6, guidance_scale=1.0, sampler="euler", seed=3), progress=False)
    torch.testing.assert_close(out, initial_noise(LATENT, 3) - flow_sigmas(6)[0] * 0.25, atol=1e-6, rtol=0)
    assert model.calls == 6


class RecordingVelocity(ConstantVelocity):
    def __init__(self):
        super().__init__(0.0, 0.0)
        self.timesteps = []

    def forward(self, hidden_states, timestep, **kwargs):
        self.timesteps.append(timestep)
        return super().forward(hidden_states, timestep, **kwargs)


@pytest.mark.parametrize("sampler", ["unipc", "euler"])
@pytest.mark.parametrize("schedule", ["release", "diffusers"])
def test_the_model_sees_the_schedules_timesteps(sampler, schedule):
    # UniPC feeds int64 truncations of sigma * 1000 (the release: 999, 856, 599), Euler float sigma * 1000.
    model = RecordingVelocity()
    sample(model, _conditioning(), SamplingSettings(num_inference_steps=3, sampler=sampler, schedule=schedule),
           progress=False)
    seen = torch.stack(model.timesteps[::2])[:, 0]  # the positive pass of each step
    assert seen.dtype == (torch.int64 if sampler == "unipc" else torch.float32)
    assert torch.equal(seen, flow_timesteps(3, 3.0, schedule, sampler))
    if sampler == "unipc":
        assert seen.tolist() == ([999, 856, 599] if schedule == "release" else [999, 857, 600])


def test_guidance_without_a_negative_is_an_error_not_a_silent_skip():
    with pytest.raises(ValueError, match="needs negative prompt embeddings.*empty prompt"):
        sample(ConstantVelocity(0.5, 0.1), _conditioning(negative=False), SamplingSettings(num_inference_steps=2),
               progress=False)


def test_settings_refuse_unknown_names():
    with pytest.raises(ValueError, match="release, diffusers"):
        SamplingSettings(schedule="karras")
    with pytest.raises(ValueError, match="unipc, euler"):
        SamplingSettings(sampler="ddim")


def test_classifier_free_guidance_combines_both_predictions():
    model = ConstantVelocity(cond=0.5, uncond=0.1)
    out = sample(model, _conditioning(), SamplingSettings(num_inference_steps=4, guidance_scale=3.0, sampler="euler",
                                                          seed=1), progress=False)
    guided = 0.1 + 3.0 * (0.5 - 0.1)
    torch.testing.assert_close(out, initial_noise(LATENT, 1) - flow_sigmas(4)[0] * guided, atol=1e-6, rtol=0)
    assert model.calls == 8  # two passes per step


def test_guidance_one_or_below_skips_the_negative_pass():
    # As diffusers' Wan pipelines: CFG only above 1.
    for guidance in (1.0, 0.5):
        model = ConstantVelocity(cond=0.5, uncond=0.1)
        sample(model, _conditioning(), SamplingSettings(num_inference_steps=3, guidance_scale=guidance),
               progress=False)
        assert model.calls == 3


def test_hooks_report_progress_and_cancel():
    steps = []
    sample(ConstantVelocity(0.0, 0.0), _conditioning(), SamplingSettings(num_inference_steps=5),
           on_step=lambda i, n, latents: steps.append((i, n, latents.shape)), progress=False)
    assert steps == [(i, 5, torch.Size(LATENT)) for i in range(5)]

    calls = iter(range(100))
    with pytest.raises(SamplingCancelled, match="step 3 of 5"):
        sample(ConstantVelocity(0.0, 0.0), _conditioning(), SamplingSettings(num_inference_steps=5),
               should_cancel=lambda: next(calls) == 2, progress=False)


def test_seeded_sampling_with_the_real_transformer_is_deterministic():
    torch.manual_seed(0)
    model = FourDNeXTransformer3DModel(**TINY_TRANSFORMER).eval()
    settings = SamplingSettings(num_inference_steps=3, guidance_scale=5.0, seed=42)
    conditioning = _conditioning()
    conditioning.condition = torch.randn(1, 20, *LATENT[2:], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        first = sample(model, conditioning, settings, progress=False)
        second = sample(model, conditioning, settings, progress=False)
        other_seed = sample(model, conditioning, SamplingSettings(num_inference_steps=3, seed=7), progress=False)
    assert torch.equal(first, second)
    assert not torch.allclose(first, other_seed)
    assert first.shape == LATENT and torch.isfinite(first).all()


def test_unipc_and_euler_schedulers_use_the_flow_shift():
    for name in ("unipc", "euler"):
        shifted, plain = make_scheduler(name, 3.0), make_scheduler(name, 1.0)
        shifted.set_timesteps(10), plain.set_timesteps(10)
        assert shifted.sigmas[1] > plain.sigmas[1]  # shift > 1 spends more steps at high noise
    with pytest.raises(ValueError, match="unipc, euler"):
        make_scheduler("ddim")


def test_text_embeddings_must_have_512_tokens():
    with pytest.raises(ValueError, match="exactly 512 tokens"):
        Conditioning(condition=torch.zeros(1, 20, 2, 4, 8), prompt_embeds=torch.zeros(1, 77, 32),
                     image_embeds=torch.zeros(1, 257, 24))


@pytest.fixture(scope="module")
def tiny_vae():
    torch.manual_seed(0)
    return AutoencoderKLWan(**TINY_VAE).eval()


def test_condition_latent_has_mask_then_latent_channels(tiny_vae):
    image = torch.rand(3, 32, 32)
    condition = encode_condition(tiny_vae, image, xyz_init_map(32, 32), 5, progress=False)
    assert condition.shape == (1, 20, 2, 4, 8)
    assert torch.all(condition[0, :4, 0, :, :4] == 1.0) and torch.all(condition[0, :4, 0, :, 4:] == 0.5)
    assert torch.all(condition[0, :4, 1:] == 0.0)


def test_decode_splits_and_denormalizes_the_xyz_half(tiny_vae):
    latent = torch.randn(1, 16, 2, 4, 8)
    decoded = decode_wide_latent(tiny_vae, latent, progress=False)
    assert decoded.rgb.shape == (5, 32, 32, 3) and decoded.xyz.shape == (5, 32, 32, 3)
    assert decoded.rgb.min() >= 0 and decoded.rgb.max() <= 1
    assert decoded.xyz.min() >= -1 and decoded.xyz.max() <= 1
    # The XYZ half is de-normalized (x * sigma + mu) before the VAE sees it: a normalized XYZ
    # half of 0 must decode like a Wan latent whose XYZ half is mu.
    shifted = latent.clone()
    shifted[..., 4:] = 0.0
    raw = latent.clone()
    raw[..., 4:] = XYZ_LATENT_MEAN
    direct = decode_latent(tiny_vae, raw, progress=False)
    via_pipeline = decode_wide_latent(tiny_vae, shifted, progress=False)
    torch.testing.assert_close(via_pipeline.xyz, ((direct[0, :, :, :, 32:] + 1) / 2).clamp(0, 1).permute(1, 2, 3, 0) * 2 - 1)
