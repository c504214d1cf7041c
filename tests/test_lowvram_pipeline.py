"""Memory options through the pipeline and ``fourdnex generate``: exact ones change nothing."""

import contextlib

import numpy as np
import pytest
import torch

from fourdnex_core import pipeline as pipeline_module
from fourdnex_core.cli import main
from fourdnex_core.lowvram import EmbeddingCache, LowVramOptions
from fourdnex_core.model_set import ModelLocations, load_pipeline
from fourdnex_core.sampler import SamplingSettings
from fourdnex_core.scene_file import load_scene
from fourdnex_core.tiny import make_tiny_models
from test_end_to_end import EXAMPLE, SMALL


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_models(tmp_path_factory.mktemp("tiny"))


def _generate(pipeline, prompt="a ball"):
    image = torch.rand(1, 40, 60, 3, generator=torch.Generator().manual_seed(0))
    return pipeline(image, prompt, num_frames=5, height=32, width=48,
                    settings=SamplingSettings(num_inference_steps=2, seed=3), progress=False)


def _record_stages(pipeline, monkeypatch):
    """Log each component stage and the transformer's placement (with its swapped block count) in order."""
    stages = []
    place, use = pipeline_module.transformer_on_device, pipeline.offload.use

    @contextlib.contextmanager
    def placed(*args, **kwargs):
        with place(*args, **kwargs) as swap:
            stages.append(("transformer", swap.blocks_to_swap if swap else 0))
            yield swap
        stages.append(("transformer back", all(p.device.type == "cpu" for p in pipeline.transformer.parameters())))

    @contextlib.contextmanager
    def used(name):
        with use(name) as module:
            stages.append(name)
            yield module

    monkeypatch.setattr(pipeline_module, "transformer_on_device", placed)
    monkeypatch.setattr(pipeline.offload, "use", used)
    return stages


def test_block_swap_offload_and_embedding_cache_are_exact(tiny, tmp_path, monkeypatch):
    locations = ModelLocations(root=tiny.comfy_models, lora=tiny.comfy_lora)
    plain = _generate(load_pipeline(locations))

    cache = EmbeddingCache(directory=tmp_path / "prompts")
    options = LowVramOptions(blocks_to_swap=1, offload="free")
    pipeline = load_pipeline(locations, memory=options, embedding_cache=cache)
    assert pipeline.text_encoder is None and pipeline.vae is None  # held by the offload, loaded per stage
    assert pipeline.block_swap is None  # placed, and its blocks swapped, for each sampling run only
    stages = _record_stages(pipeline, monkeypatch)
    first = _generate(pipeline)
    # The encoders and the VAE never share the GPU with the transformer (24 GB: fp8 15.5 GiB + UMT5 11 GB).
    assert stages == ["text_encoder", "image_encoder", "vae", ("transformer", 1), ("transformer back", True), "vae"]
    assert not any(block._forward_pre_hooks for block in pipeline.transformer.blocks)  # swap hooks removed
    second = _generate(pipeline)
    assert torch.equal(first.latent, plain.latent) and torch.equal(first.xyz, plain.xyz)
    assert torch.equal(second.latent, plain.latent)
    assert pipeline.offload.loads("text_encoder") == 1  # the second run's prompt came from the cache
    assert pipeline.offload.loads("vae") == 4  # "free": loaded for encode and decode, in each run
    assert (cache.hits, cache.misses) == (1, 1)

    fresh = load_pipeline(locations, memory=options, embedding_cache=EmbeddingCache(directory=tmp_path / "prompts"))
    assert torch.equal(_generate(fresh).latent, plain.latent)
    assert fresh.offload.loads("text_encoder") == 0  # a new process re-uses the embeddings on disk


def test_step_cache_runs_through_the_pipeline_and_stays_close(tiny):
    locations = ModelLocations(root=tiny.comfy_models, lora=tiny.comfy_lora)
    plain = _generate(load_pipeline(locations))
    cached = _generate(load_pipeline(locations, memory=LowVramOptions(step_cache_threshold=0.0)))
    assert torch.equal(cached.latent, plain.latent)  # threshold 0: off
    approximate = _generate(load_pipeline(locations, memory=LowVramOptions(step_cache_threshold=0.3)))
    assert approximate.latent.shape == plain.latent.shape and torch.isfinite(approximate.latent).all()


def test_generate_cli_memory_flags(tiny, tmp_path, capsys):
    def generate(out, *flags):
        code = main(["generate", str(EXAMPLE), "--out", str(tmp_path / out), "--models", str(tiny.comfy_models),
                     "--lora", str(tiny.comfy_lora), *SMALL, *flags])
        return code, (load_scene(tmp_path / out / "scene.npz") if code == 0 else None)

    _, plain = generate("plain")
    code, low = generate("low", "--low-vram", "auto", "--blocks-to-swap", "2", "--offload", "cpu",
                         "--embedding-cache", str(tmp_path / "prompts"), "--no-compile")
    assert code == 0
    assert np.array_equal(low.xyz, plain.xyz) and np.array_equal(low.rgb, plain.rgb)
    assert any((tmp_path / "prompts").iterdir())

    with pytest.raises(SystemExit) as exit_info:
        generate("bad", "--blocks-to-swap", "-1")
    assert exit_info.value.code == 2 and "the block count must be >= 0" in capsys.readouterr().err
    assert generate("bad", "--attention", "sage")[0] == 2
    assert "sage" in capsys.readouterr().err
