"""The trainer: velocity convention against the sampler, loss falls below the zero-prediction
baseline, exact resume (in process and after SIGKILL), atomic checkpoints, exported LoRAs (ours and
the release's diffusers layout) that reproduce the trained model, samples during training, timestep
sampling and the fp32 / bf16 weight choice."""

import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from fourdnex_core.loading.fp8 import FP8Linear
from fourdnex_core.writing.single_files import save_transformer_single_file
from fourdnex_core.lowvram.activation_offload import offloaded_checkpoint
from fourdnex_core.lowvram.fp8_weights import quantize_block_linears
from fourdnex_core.lora import attach_lora, read_lora, set_domain_embeddings
from fourdnex_core.model_set import apply_4dnex_lora
from fourdnex_core.sampler import Conditioning, SamplingSettings, sample
from fourdnex_core.transformer import FourDNeXTransformer3DModel
from tiny_configs import TINY_TRANSFORMER
from fourdnex_train.cache import CachedClip, cache_path, list_cache, read_cached_clip, write_cached_clip
from fourdnex_train.config import ConfigError, config_from_dict
from fourdnex_train.devices import weight_dtype
from fourdnex_train.dataset import LatentDataset
from fourdnex_train.flow_matching import (
    Batch,
    TimestepSampling,
    evaluation_loss,
    flow_matching_loss,
    noisy_latent,
    sample_sigmas,
    wide_latent,
    zero_velocity,
)
from fourdnex_train.logging_utils import read_log
from fourdnex_train.lora_setup import add_lora, trainable_state_dict
from fourdnex_train.samples import conditioning_of
from fourdnex_train.trainer import Trainer, load_base_transformer, micro_batch_generator

REPO = Path(__file__).resolve().parents[1]
LATENT = (16, 2, 4, 4)  # [C, f, h, w] of one modality


def _write_cache(folder, count=2, seed=0):
    """``count`` random clips; the clean wide latent x0 (after the XYZ normalization) is N(0, 1)."""
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


def _config(tmp_path, out="out", memory=None, **train):
    return config_from_dict({
        "memory": memory or {},
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
    result = sample(oracle, conditioning, SamplingSettings(num_inference_steps=8, guidance_scale=1.0, sampler="euler"),
                    progress=False)
    torch.testing.assert_close(result, clean, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(noisy_latent(clean, torch.ones_like(clean), torch.tensor([1.0])), torch.ones_like(clean))


def held_out_loss(model, cache_dir, draws=32):
    """:func:`evaluation_loss` over ``draws`` batches of the cache (the same draws for every model)."""
    dataset = LatentDataset(list_cache(cache_dir), batch_size=1, seed=0)
    return evaluation_loss(model, [dataset.batch(k) for k in range(draws)], TimestepSampling(), seed=99)


WIDE_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2", "proj_out"]


def test_loss_falls_below_zero_prediction_and_lora_loads_reproduces_and_changes_the_sampler(tmp_path):
    _write_cache(tmp_path / "cache")
    config = _config(tmp_path, max_steps=150, seed=1)
    config.checkpoint.every_n_steps = 0
    config.optim.lr, config.optim.scheduler = 1e-2, "constant_with_warmup"
    # A LoRA wide enough to learn on a 2-layer, 24-wide random model (attention alone barely cancels
    # the random base output; BENCHMARKS.md, "Tiny CPU training run").
    config.lora.rank, config.lora.alpha, config.lora.target_modules = 16, 16.0, WIDE_TARGETS
    trainer = Trainer(config, _base_model())
    result = trainer.train()
    first, last = sum(result.losses[:10]) / 10, sum(result.losses[-20:]) / 20
    assert last < 0.8 * first, (first, last)
    cache = tmp_path / "cache"
    zero, untrained = held_out_loss(zero_velocity, cache), held_out_loss(_base_model().eval(), cache)
    trained_loss = held_out_loss(trainer.transformer.eval(), cache)
    assert 1.8 < zero < 2.2 and untrained > zero  # x0 ~ N(0, 1): zero prediction scores about 2
    # It learned the data, beyond cancelling the random base output (which only reaches `zero`).
    assert trained_loss < 0.85 * zero, (zero, untrained, trained_loss)
    assert [row["step"] for row in read_log(tmp_path / "out" / "metrics.csv")] == list(range(1, 151))

    # The exported file loads with the project's reader and gives the peft-trained forward.
    fresh = _base_model()
    lora = read_lora(result.lora_path, fresh)
    assert len(lora.layers) == 2 * 10 + 1  # per block 8 attention + 2 FFN layers, plus proj_out
    assert all(layer.alpha == 16.0 and layer.rank == 16 for layer in lora.layers)
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

    monkeypatch.setattr("fourdnex_train.trainer.write_trained_lora", crash)
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


@pytest.mark.slow  # two trainer subprocesses
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
    command = [sys.executable, "-m", "fourdnex_train", "run", str(tmp_path / "run.toml")]
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


def test_diffusers_layout_output_loads_through_apply_4dnex_lora(tmp_path):
    _write_cache(tmp_path / "cache")
    config = _config(tmp_path, max_steps=3, save_diffusers_format=True)
    config.optim.lr = 1e-2
    trainer = Trainer(config, _base_model())
    trainer.train()
    folder = tmp_path / "out" / "diffusers"
    assert sorted(p.name for p in folder.iterdir()) == ["learnable_domain_embeddings.pt",
                                                        "pytorch_lora_weights.safetensors"]
    released = _base_model().eval()
    handle = apply_4dnex_lora(released, folder)  # the release's folder: the LoRA and its embeddings beside it
    torch.testing.assert_close(released.domain_embeddings, trainer.transformer.domain_embeddings.detach())
    batch = LatentDataset(list_cache(tmp_path / "cache"), batch_size=1, seed=0).batch(0)

    def loss(model):
        with torch.no_grad():
            return flow_matching_loss(model, batch, TimestepSampling(), torch.Generator().manual_seed(5))[0]

    trained = loss(trainer.transformer.eval())
    torch.testing.assert_close(loss(released), trained, atol=1e-5, rtol=1e-5)  # strength 1.0 = the training scale
    handle.remove()
    assert abs(float(loss(released) - trained)) > 1e-4


def test_samples_are_written_every_n_steps_without_changing_training(tmp_path):
    _write_cache(tmp_path / "cache")
    plain = Trainer(_config(tmp_path, out="plain", max_steps=5), _base_model()).train()
    config = _config(tmp_path, out="sampled", max_steps=5)
    config.sample.every_n_steps, config.sample.num_inference_steps, config.sample.sampler = 2, 2, "euler"
    sampled = Trainer(config, _base_model()).train()
    folder = tmp_path / "sampled" / "samples"
    assert sorted(p.name for p in folder.iterdir()) == ["step-00000002_clip_0.safetensors",
                                                        "step-00000004_clip_0.safetensors"]
    with safe_open(str(folder / "step-00000004_clip_0.safetensors"), framework="pt") as handle:
        assert handle.get_tensor("latent").shape == (1, 16, 2, 4, 8)  # [1, C, f, h, 2w]
    assert sampled.losses == plain.losses  # sampling draws from its own generator


def test_logit_normal_sigmas_follow_their_distribution():
    generator = torch.Generator().manual_seed(0)
    sigma = sample_sigmas(40_000, TimestepSampling("logit_normal", logit_mean=0.5, logit_std=0.8), generator)
    assert 0 < float(sigma.min()) and float(sigma.max()) < 1
    logits = torch.logit(sigma.double())
    assert float(logits.mean()) == pytest.approx(0.5, abs=0.02) and float(logits.std()) == pytest.approx(0.8, abs=0.02)
    assert float(sigma.median()) == pytest.approx(torch.sigmoid(torch.tensor(0.5)).item(), abs=0.01)
    # Mid-range noise is favoured over the ends, unlike uniform sampling.
    assert float(((sigma > 0.25) & (sigma < 0.75)).double().mean()) > 0.6
    # Wan's shift s maps the median m to s m / (1 + (s - 1) m).
    shifted = sample_sigmas(40_000, TimestepSampling("logit_normal", flow_shift=3.0), torch.Generator().manual_seed(0))
    assert float(shifted.median()) == pytest.approx(0.75, abs=0.01)


def test_the_trainer_uses_the_configured_timestep_sampling(tmp_path):
    _write_cache(tmp_path / "cache")
    trainer = Trainer(_config(tmp_path, max_steps=2, timestep_sampling="logit_normal", logit_mean=-1.0,
                              logit_std=0.5, flow_shift=2.0), _base_model())
    assert trainer.sampling == TimestepSampling("logit_normal", -1.0, 0.5, 2.0)
    trainer.train()
    expected = [float(sample_sigmas(1, trainer.sampling, _sigma_draw(trainer, index))) for index in range(2)]
    logged = [row["sigma_mean"] for row in read_log(tmp_path / "out" / "metrics.csv")]
    assert logged == pytest.approx(expected, rel=1e-5)


def _sigma_draw(trainer, index):
    """The generator state from which flow_matching_loss drew micro-batch ``index``'s sigma (after its noise)."""
    generator = micro_batch_generator(trainer.config.train.seed, index)
    torch.randn((1, 16, 2, 4, 8), generator=generator)
    return generator


def test_fp32_training_loads_the_base_in_fp32_and_rejects_a_bf16_base(tmp_path, monkeypatch):
    gpu = torch.device("cuda")  # only the dtype choice is exercised: nothing runs on it
    assert weight_dtype("bf16", gpu, "fp32") == torch.float32
    assert weight_dtype("bf16", gpu, "auto") == weight_dtype("bf16", gpu, "bf16") == torch.bfloat16
    config = _config(tmp_path, mixed_precision="fp32")
    config.models.transformer = save_transformer_single_file(_base_model(), tmp_path / "transformer.safetensors")
    # load_transformer is replaced to see the dtype it is asked for (only the file's header is read).
    loaded = {}
    monkeypatch.setattr("fourdnex_train.trainer.load_transformer", lambda source, **kwargs: loaded.update(kwargs))
    load_base_transformer(config, gpu)
    assert loaded["dtype"] == torch.float32 and config.models.dtype == "bf16"

    # The crash this avoids (what a GPU run did): bf16 weights under fp32 activations, no autocast.
    _write_cache(tmp_path / "cache")
    batch = LatentDataset(list_cache(tmp_path / "cache"), batch_size=1, seed=0).batch(0)
    with pytest.raises(RuntimeError, match="type .* should be the same|dtype"):
        flow_matching_loss(_base_model().to(torch.bfloat16), batch, TimestepSampling(),
                           torch.Generator().manual_seed(0))
    with pytest.raises(ConfigError, match="bfloat16 weights but training runs without autocast"):
        Trainer(config, _base_model().to(torch.bfloat16))
    assert Trainer(config, _base_model()).train_step()["loss"] > 0


def test_lora_targets_that_are_not_linear_are_refused():
    with pytest.raises(ValueError, match=r"not Linear: patch_embedding \(Conv3d\).*Linear layers only"):
        add_lora(_base_model(), rank=4, alpha=4.0, target_modules=["to_q", "patch_embedding"])


def _same_training(first, second, steps=2, rel=0.0):
    """Run both trainers ``steps`` steps; losses, gradient norms and the trained tensors agree within ``rel``."""
    for _ in range(steps):
        a, b = first.train_step(), second.train_step()
        assert a["loss"] == pytest.approx(b["loss"], rel=rel, abs=0) and a["grad_norm"] == pytest.approx(
            b["grad_norm"], rel=max(rel, 1e-7))
    trained = [trainable_state_dict(trainer.transformer) for trainer in (first, second)]
    assert trained[0].keys() == trained[1].keys()
    for key in trained[0]:
        torch.testing.assert_close(trained[0][key], trained[1][key], rtol=rel, atol=rel * 1e-2)


def test_block_swap_trains_exactly_like_the_resident_model(tmp_path):
    _write_cache(tmp_path / "cache")
    resident = Trainer(_config(tmp_path, out="a", max_steps=3, gradient_checkpointing=True), _base_model())
    swapped = Trainer(_config(tmp_path, out="b", max_steps=3, gradient_checkpointing=True,
                              memory={"blocks_to_swap": 1}), _base_model())
    swap = swapped.block_swap
    assert swap is not None and list(swap._swapped) == [0] and resident.block_swap is None
    lora_in_block_0 = [p for n, p in swapped.transformer.blocks[0].named_parameters() if "lora_" in n]
    swapped_ids = {id(t) for t in swap._swapped[0].tensors}
    assert lora_in_block_0 and not any(id(p) in swapped_ids for p in lora_in_block_0)  # the LoRA stays put
    assert all(not t.requires_grad for t in swap._swapped[0].tensors)
    _same_training(resident, swapped, steps=3)
    assert swapped.train().lora_path.is_file()


def test_offloaded_activations_with_block_swap_train_exactly_like_plain_checkpointing(tmp_path):
    _write_cache(tmp_path / "cache")
    plain = Trainer(_config(tmp_path, out="a", max_steps=3, gradient_checkpointing=True), _base_model())
    low = Trainer(_config(tmp_path, out="b", max_steps=3, gradient_checkpointing=True,
                          memory={"offload_activations": True, "blocks_to_swap": 1}), _base_model())
    assert low.transformer._gradient_checkpointing_func is offloaded_checkpoint
    _same_training(plain, low, steps=3)


def test_fp8_base_weights_train_like_their_dequantized_values(tmp_path):
    _write_cache(tmp_path / "cache")
    fp8 = Trainer(_config(tmp_path, out="a", memory={"fp8": "weights"}), _base_model())
    wrapped = [m.get_base_layer() for m in fp8.transformer.modules() if hasattr(m, "get_base_layer")
               and "lora_A" in dict(m.named_children())]
    assert wrapped and all(isinstance(layer, FP8Linear) for layer in wrapped)  # the LoRA sits on fp8 layers
    assert all(p.dtype == torch.float32 for p in fp8.trainable)
    rounded = _base_model()  # the same model with its block Linear weights replaced by their fp8 values
    quantized = _base_model()
    quantize_block_linears(quantized)
    with torch.no_grad():
        for name, module in quantized.named_modules():
            if isinstance(module, FP8Linear):
                rounded.get_submodule(name).weight.copy_(module.dequantized_weight(torch.float32))
    _same_training(fp8, Trainer(_config(tmp_path, out="b"), rounded), rel=1e-6)


def test_another_attention_kernel_trains_within_rounding(tmp_path):
    _write_cache(tmp_path / "cache")
    math = Trainer(_config(tmp_path, out="a", memory={"attention": "math"}), _base_model())
    backends = {m.processor._attention_backend.value for m in math.transformer.modules() if hasattr(m, "processor")}
    assert backends == {"_native_math"}
    _same_training(math, Trainer(_config(tmp_path, out="b"), _base_model()), rel=1e-5)


def test_a_comfyui_fp8_file_trains_in_fp8_with_memory_fp8_weights(tmp_path, caplog):
    model_file = save_transformer_single_file(_base_model(), tmp_path / "wan_fp8_scaled.safetensors",
                                              dtype=torch.float32, fp8="scaled")
    config = _config(tmp_path, memory={"fp8": "weights"})
    config.models.transformer = model_file
    loaded = load_base_transformer(config, torch.device("cpu"))
    layers = [m for m in loaded.blocks.modules() if isinstance(m, FP8Linear)]
    assert layers and all(layer.weight.dtype == torch.float8_e4m3fn for layer in layers)
    assert all(layer.compute_dtype == torch.float32 for layer in layers)  # fp32 on the CPU, no autocast
    config.memory.fp8 = "off"
    with caplog.at_level("WARNING", logger="fourdnex_train.trainer"):
        upcast = load_base_transformer(config, torch.device("cpu"))
    assert not any(isinstance(m, FP8Linear) for m in upcast.modules())
    assert 'wan_fp8_scaled.safetensors holds fp8 weights; with [memory] fp8 = "off" they are upcast to float32' \
        in caplog.text and 'fp8 = "weights"' in caplog.text
