"""The trainer: velocity convention against the sampler, loss falls, exact resume (in process and
after SIGKILL), atomic checkpoints, and an exported LoRA that reproduces the trained model."""

import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import torch

from fourdnex_core.loading.single_file_writers import save_transformer_single_file
from fourdnex_core.lora import attach_lora, read_lora, set_domain_embeddings
from fourdnex_core.sampler import Conditioning, SamplingSettings, sample
from fourdnex_core.transformer import FourDNeXTransformer3DModel
from tiny_configs import TINY_TRANSFORMER
from train.cache import CachedClip, cache_path, read_cached_clip, write_cached_clip
from train.config import config_from_dict
from train.flow_matching import Batch, TimestepSampling, flow_matching_loss, noisy_latent, wide_latent
from train.logging_utils import read_log
from train.samples import conditioning_of
from train.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
LATENT = (16, 2, 4, 4)  # [C, f, h, w] of one modality


def _write_cache(folder, count=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    for index in range(count):
        name = f"clip_{index}"
        write_cached_clip(cache_path(folder, name), CachedClip(
            name=name,
            rgb_latent=torch.randn(LATENT, generator=generator),
            xyz_latent=torch.randn(LATENT, generator=generator) * 1.7 - 0.13,
            condition=torch.randn(20, 2, 4, 8, generator=generator),
            image_embeds=torch.randn(257, 24, generator=generator),
            prompt_embeds=torch.randn(512, 32, generator=generator),
            xyz_center=torch.zeros(5, 3),
            metadata={"fingerprint": "test", "prompt": "x POINTMAP_STYLE."},
        ))
    return folder


def _base_model(seed=0):
    torch.manual_seed(seed)
    return FourDNeXTransformer3DModel(**TINY_TRANSFORMER)


def _config(tmp_path, out="out", **train):
    return config_from_dict({
        "data": {"cache_dir": str(tmp_path / "cache")},
        "lora": {"rank": 4, "alpha": 2.0},
        "optim": {"lr": 2e-3, "warmup_steps": 2, "scheduler": "cosine"},
        "train": {"output_dir": str(tmp_path / out), "gradient_checkpointing": False, **train},
        "checkpoint": {"every_n_steps": 2, "keep_last": 2},
        "log": {"tensorboard": False, "progress": False},
    })


class OracleVelocity(torch.nn.Module):
    """Knows the clean latent x0: predicts (x_t - x0) / sigma, the exact velocity x1 - x0."""

    def __init__(self, clean):
        super().__init__()
        self.clean = clean

    def forward(self, hidden_states, timestep, encoder_hidden_states, encoder_hidden_states_image, return_dict):
        sigma = (timestep / 1000.0).view(-1, 1, 1, 1, 1)
        return ((hidden_states[:, :16].float() - self.clean) / sigma,)


def test_training_target_is_the_velocity_the_sampler_integrates():
    generator = torch.Generator().manual_seed(0)
    batch = Batch(rgb_latent=torch.randn(1, *LATENT, generator=generator),
                  xyz_latent=torch.randn(1, *LATENT, generator=generator),
                  condition=torch.zeros(1, 20, 2, 4, 8), prompt_embeds=torch.zeros(1, 512, 32),
                  image_embeds=torch.zeros(1, 257, 24))
    clean = wide_latent(batch.rgb_latent, batch.xyz_latent)
    oracle = OracleVelocity(clean)
    loss, _ = flow_matching_loss(oracle, batch, TimestepSampling(), torch.Generator().manual_seed(1))
    assert float(loss) < 1e-10
    # Euler on the sampler's schedule with that velocity lands on x0: the conventions agree.
    conditioning = Conditioning(condition=batch.condition, prompt_embeds=batch.prompt_embeds,
                                image_embeds=batch.image_embeds)
    result = sample(oracle, conditioning, SamplingSettings(num_inference_steps=8, sampler="euler"), progress=False)
    torch.testing.assert_close(result, clean, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(noisy_latent(clean, torch.ones_like(clean), torch.tensor([1.0])), torch.ones_like(clean))


def test_loss_falls_and_lora_loads_reproduces_and_changes_the_sampler(tmp_path):
    _write_cache(tmp_path / "cache")
    config = _config(tmp_path, max_steps=60, seed=1)
    config.checkpoint.every_n_steps = 0
    config.optim.lr, config.optim.scheduler = 1e-2, "constant_with_warmup"
    trainer = Trainer(config, _base_model())
    result = trainer.train()
    first, last = sum(result.losses[:10]) / 10, sum(result.losses[-10:]) / 10
    assert last < 0.92 * first, (first, last)
    assert [row["step"] for row in read_log(tmp_path / "out" / "metrics.csv")] == list(range(1, 61))

    # The exported file loads with the project's reader and gives the peft-trained forward.
    fresh = _base_model()
    lora = read_lora(result.lora_path, fresh)
    assert len(lora.layers) == 16 and all(layer.alpha == 2.0 and layer.rank == 4 for layer in lora.layers)
    set_domain_embeddings(fresh, lora.domain_embeddings)
    assert lora.domain_embeddings.abs().sum() > 0  # the domain embeddings were trained
    conditioning = conditioning_of(read_cached_clip(cache_path(tmp_path / "cache", "clip_0")))
    settings = SamplingSettings(num_inference_steps=4, guidance_scale=1.0)
    base = sample(_base_model().eval(), conditioning, settings, progress=False)
    handle = attach_lora(fresh.eval(), list(lora.layers))
    with_lora = sample(fresh, conditioning, settings, progress=False)
    trained = sample(trainer.transformer.eval(), conditioning, settings, progress=False)
    torch.testing.assert_close(with_lora, trained, atol=1e-5, rtol=1e-5)
    assert (with_lora - base).abs().max() > 1e-3
    handle.remove()


def test_resume_replays_the_uninterrupted_run_exactly(tmp_path):
    _write_cache(tmp_path / "cache")
    full = Trainer(_config(tmp_path, out="full", max_steps=6, gradient_accumulation_steps=2), _base_model()).train()
    interrupted = Trainer(_config(tmp_path, out="split", max_steps=6, gradient_accumulation_steps=2), _base_model())
    for _ in range(3):
        interrupted.train_step()
    interrupted.save_checkpoint()  # then the process dies
    torch.manual_seed(123)  # a fresh process: other global RNG state, other LoRA initialisation
    resumed_trainer = Trainer(_config(tmp_path, out="split", max_steps=6, gradient_accumulation_steps=2),
                              _base_model())
    resumed = resumed_trainer.train()
    assert resumed_trainer.step == 6 and len(resumed.losses) == 3
    assert resumed.losses == pytest.approx(full.losses[3:], rel=1e-6, abs=1e-7)
    full_lora = read_lora(full.lora_path).layers
    for a, b in zip(full_lora, read_lora(resumed.lora_path).layers):
        torch.testing.assert_close(a.up, b.up, atol=1e-6, rtol=1e-5)
    checkpoints = sorted(p.name for p in (tmp_path / "split" / "checkpoints").iterdir())
    assert checkpoints == ["step-00000004", "step-00000006"]  # keep_last = 2 (step 3 pruned)


def test_a_checkpoint_killed_mid_write_is_never_used(tmp_path, monkeypatch):
    _write_cache(tmp_path / "cache")
    trainer = Trainer(_config(tmp_path, max_steps=4), _base_model())
    trainer.train_step()
    trainer.train_step()
    good = trainer.save_checkpoint()
    trainer.train_step()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr("train.trainer.write_trained_lora", crash)
    with pytest.raises(KeyboardInterrupt):
        trainer.save_checkpoint()
    assert list((tmp_path / "out" / "checkpoints").glob(".step-*.tmp"))
    assert trainer.checkpoints.latest() == good
    monkeypatch.undo()
    again = Trainer(_config(tmp_path, max_steps=4), _base_model())
    assert again.resume() == 2
    again.save_checkpoint()
    assert not list((tmp_path / "out" / "checkpoints").glob(".step-*.tmp"))


def test_gradient_checkpointing_gives_the_same_step(tmp_path):
    _write_cache(tmp_path / "cache")
    plain = Trainer(_config(tmp_path, out="a", max_steps=1), _base_model()).train_step()
    checkpointed = Trainer(_config(tmp_path, out="b", max_steps=1, gradient_checkpointing=True),
                           _base_model()).train_step()
    assert checkpointed["loss"] == pytest.approx(plain["loss"], rel=1e-6)
    assert checkpointed["grad_norm"] == pytest.approx(plain["grad_norm"], rel=1e-5)


def test_cache_of_mixed_sizes_and_missing_cache_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="fourdnex-train prepare"):
        Trainer(_config(tmp_path), _base_model())
    _write_cache(tmp_path / "cache")
    odd = CachedClip(name="odd", rgb_latent=torch.zeros(16, 3, 4, 4), xyz_latent=torch.zeros(16, 3, 4, 4),
                     condition=torch.zeros(20, 3, 4, 8), image_embeds=torch.zeros(257, 24),
                     prompt_embeds=torch.zeros(512, 32), xyz_center=torch.zeros(9, 3), metadata={})
    write_cached_clip(cache_path(tmp_path / "cache", "odd"), odd)
    with pytest.raises(ValueError, match="mixes training sizes"):
        Trainer(_config(tmp_path), _base_model())


def _wait_for_step(metrics: Path, step: int, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metrics.is_file() and len(metrics.read_text().splitlines()) > step:
            return
        if process.poll() is not None:
            pytest.fail(f"trainer exited early: {process.stderr.read().decode()[-2000:]}")
        time.sleep(0.05)
    pytest.fail("trainer made no progress")


def test_sigkill_mid_run_then_resume_matches_an_uninterrupted_run(tmp_path):
    _write_cache(tmp_path / "cache")
    model_file = save_transformer_single_file(_base_model(), tmp_path / "transformer.safetensors", dtype=torch.float32)
    toml = f"""
[data]
cache_dir = "cache"
[models]
transformer = "{model_file.name}"
[lora]
rank = 4
alpha = 2.0
[optim]
lr = 2e-3
warmup_steps = 2
[train]
output_dir = "killed"
max_steps = 200
gradient_checkpointing = false
[checkpoint]
every_n_steps = 2
[log]
tensorboard = false
progress = false
"""
    (tmp_path / "run.toml").write_text(toml)
    command = [sys.executable, "-m", "train", "run", str(tmp_path / "run.toml")]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_for_step(tmp_path / "killed" / "metrics.csv", 5, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert len(read_log(tmp_path / "killed" / "metrics.csv")) < 200  # killed mid-run (steps take ~10 ms)
    finished = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]

    reference = config_from_dict(tomllib.loads(toml), base_dir=tmp_path)
    reference.train.output_dir = tmp_path / "reference"
    expected = Trainer(reference).train().losses
    killed = [row["loss"] for row in read_log(tmp_path / "killed" / "metrics.csv")]
    assert [row["step"] for row in read_log(tmp_path / "killed" / "metrics.csv")] == list(range(1, 201))
    assert killed == pytest.approx(expected, rel=1e-5, abs=1e-7)
