"""The trainer never trains on less data than it was given and never writes a non-finite LoRA:
a corrupt cache file is named, a cache holding NaN is refused, a diverging run stops at the
first non-finite step with the step, the clips and the likely cause, and writes nothing."""

import pytest
import torch

from test_train_trainer import _base_model, _config, _write_cache
from fourdnex_train.cache import cache_path, list_cache, read_cached_clip, write_cached_clip
from fourdnex_train.lora_setup import add_lora, write_diffusers_lora, write_trained_lora
from fourdnex_train.trainer import Trainer, TrainingDivergedError


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_corrupt_cache_file_is_named_not_silently_dropped(tmp_path, damage):
    cache = _write_cache(tmp_path / "cache", count=3)
    broken = cache_path(cache, "clip_1")
    raw = broken.read_bytes()
    broken.write_bytes(raw[: len(raw) // 2] if damage == "truncated" else b"not a safetensors file at all")
    with pytest.raises(ValueError, match=r"1 file\(s\).*clip_1\.safetensors.*fourdnex-train prepare"):
        list_cache(cache)
    with pytest.raises(ValueError, match="clip_1.safetensors"):
        Trainer(_config(tmp_path), _base_model())


def test_hidden_partial_files_of_interrupted_writes_are_ignored(tmp_path):
    cache = _write_cache(tmp_path / "cache", count=2)
    (cache / ".clip_9.safetensors.0a1b2c3d.partial").write_bytes(b"half")
    assert [path.name for path in list_cache(cache)] == ["clip_0.safetensors", "clip_1.safetensors"]


def test_a_cache_file_holding_nan_is_refused_naming_the_tensor(tmp_path):
    cache = _write_cache(tmp_path / "cache", count=1)
    clip = read_cached_clip(cache_path(cache, "clip_0"))
    clip.xyz_latent[0, 0, 0, 0] = float("nan")
    write_cached_clip(cache_path(cache, "clip_0"), clip)
    with pytest.raises(ValueError, match="NaN or infinite values in xyz_latent"):
        read_cached_clip(cache_path(cache, "clip_0"))


@pytest.mark.parametrize("train_domain_embeddings", [True, False])
def test_a_diverging_run_stops_at_once_and_writes_no_lora(tmp_path, train_domain_embeddings):
    _write_cache(tmp_path / "cache")
    config = _config(tmp_path, max_steps=20)
    config.optim.lr, config.optim.warmup_steps, config.optim.scheduler = 1e30, 0, "constant"
    config.lora.train_domain_embeddings = train_domain_embeddings
    config.checkpoint.every_n_steps = 1
    trainer = Trainer(config, _base_model())
    with pytest.raises(TrainingDivergedError, match=r"at step 2: the loss is nan \(clips clip_\d\).*learning rate "
                                                    r"1e\+30 is too high.*no LoRA was written; the checkpoint "
                                                    r".*step-00000001 is intact"):
        trainer.train()
    assert trainer.step == 1  # stopped at the first non-finite loss, not hundreds of steps later
    assert not trainer.lora_path.exists()
    checkpoints = tmp_path / "out" / "checkpoints"
    assert [p.name for p in checkpoints.iterdir()] == ["step-00000001"]  # the last good step, finite
    saved = trainer.checkpoints.load(checkpoints / "step-00000001")["trainable"]
    assert all(torch.isfinite(tensor).all() for tensor in saved.values())


def test_non_finite_gradients_stop_the_step_before_the_update(tmp_path):
    _write_cache(tmp_path / "cache")
    trainer = Trainer(_config(tmp_path, max_steps=4), _base_model())
    before = {name: p.detach().clone() for name, p in trainer.transformer.named_parameters() if p.requires_grad}
    lora_a = next(p for name, p in trainer.transformer.named_parameters() if "lora_A" in name)
    lora_a.register_hook(lambda grad: torch.full_like(grad, float("inf")))
    with pytest.raises(TrainingDivergedError, match="at step 1: the gradient norm is (inf|nan)"):
        trainer.train_step()
    after = dict(trainer.transformer.named_parameters())
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_lora_writers_refuse_non_finite_tensors(tmp_path):
    model = _base_model()
    add_lora(model, rank=2, alpha=2.0, target_modules=["to_q"])
    with torch.no_grad():
        next(p for name, p in model.named_parameters() if "lora_B" in name)[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite values.*lora_B"):
        write_trained_lora(tmp_path / "lora.safetensors", model, {})
    with pytest.raises(ValueError, match="NaN or infinite values"):
        write_diffusers_lora(tmp_path / "diffusers", model, rank=2, alpha=2.0, target_modules=["to_q"])
    assert not (tmp_path / "lora.safetensors").exists() and not list((tmp_path / "diffusers").glob("*"))


def test_clip_frames_of_any_image_mode_read_as_rgb_and_a_garbage_frame_is_named(tmp_path):
    import numpy as np
    from PIL import Image

    from fourdnex_train.clip_source import read_video

    folder = tmp_path / "rgb"
    folder.mkdir()
    Image.fromarray(np.full((4, 6), 128, np.uint8), "L").save(folder / "0000.png")
    Image.fromarray(np.full((4, 6), 65535, np.uint16)).save(folder / "0001.png")  # 16-bit grayscale
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(folder / "0002.png")
    frames = read_video(folder)
    assert frames.shape == (3, 4, 6, 3)
    torch.testing.assert_close(frames[:, 0, 0], torch.tensor([[128 / 255] * 3, [1.0] * 3, [0.0] * 3]))
    (folder / "0003.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ValueError, match=r"Cannot read .*0003.png as an image"):
        read_video(folder)
