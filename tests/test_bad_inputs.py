"""`fourdnex generate` never calls garbage a success and never loses a result: settings refused
before any model loads, a job too big for the machine refused with what fits, earlier runs kept
unless --overwrite, non-finite weights named when they load, a non-finite latent stopped where it
appears, and the text encoder not widened to fp32 on the CPU. See docs/BAD_INPUTS.md."""

import shutil

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import fourdnex_core.cli.generate as generate_command
from fourdnex_core.cli import main
from fourdnex_core.image_io import load_image
from fourdnex_core.job_size import check_job_fits, job_memory
from fourdnex_core.loading.safetensors_io import CorruptSafetensorsError, non_finite_tensors, read_header
from fourdnex_core.loading.text_encoder_loader import stored_precision, text_encoder_precision
from fourdnex_core.loading.transformer_loader import load_transformer
from fourdnex_core.lora import read_lora
from fourdnex_core.model_set import ModelLocations, load_pipeline
from fourdnex_core.sampler import Conditioning, NonFiniteLatentError, SamplingSettings, sample
from fourdnex_core.tiny import COMFY_FILES
from fourdnex_core.transformer import FourDNeXTransformer3DModel
from test_end_to_end import EXAMPLE, SMALL, tiny  # noqa: F401 (the module-scoped tiny model set)


def _generate(tiny, out, *extra):  # noqa: F811
    return main(["generate", str(EXAMPLE), "--out", str(out), "--models", str(tiny.comfy_models), *SMALL, *extra])


@pytest.fixture
def no_loading(monkeypatch):
    monkeypatch.setattr(generate_command, "load_pipeline", lambda *a, **k: pytest.fail("a model was loaded"))


@pytest.mark.parametrize(("extra", "message"), [
    (["--cfg", "nan"], "guidance_scale must be a number >= 0"),
    (["--cfg", "-1"], "guidance_scale must be a number >= 0"),
    (["--shift", "inf"], "flow_shift must be positive"),
    (["--seed", "-1"], "seed must be in 0 .. 2**64 - 1"),
    (["--seed", str(2**64)], "seed must be in 0 .. 2**64 - 1"),
    (["--fps", "0"], "--fps must be a positive number"),
    (["--fps", "nan"], "--fps must be a positive number"),
    (["--lora-strength", "nan"], "--lora-strength must be a finite number"),
    (["--frames", "100001", "--height", "480", "--width", "720"], "at most"),
])
def test_settings_are_refused_before_any_model_loads(tiny, tmp_path, capsys, no_loading, extra, message):  # noqa: F811
    assert _generate(tiny, tmp_path / "out", *extra) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing created for a run that cannot start


def test_a_second_run_into_the_same_folder_is_refused_unless_overwrite(tiny, tmp_path, capsys, monkeypatch):  # noqa: F811
    out = tmp_path / "out"
    assert _generate(tiny, out) == 0
    earlier = {name: (out / name).read_bytes() for name in generate_command.OUTPUT_FILES}
    loaded = []
    real = generate_command.load_pipeline
    monkeypatch.setattr(generate_command, "load_pipeline", lambda *a, **k: loaded.append(1) or real(*a, **k))
    assert _generate(tiny, out, "--seed", "1") == 2
    assert "already holds rgb.mp4, xyz.mp4, scene.npz, run.json" in capsys.readouterr().err
    assert not loaded  # refused before loading
    assert {name: (out / name).read_bytes() for name in earlier} == earlier
    assert _generate(tiny, out, "--seed", "1", "--overwrite") == 0
    assert (out / "scene.npz").read_bytes() != earlier["scene.npz"]
    assert sorted(p.name for p in out.iterdir()) == sorted(earlier)  # no temporary file left


def test_an_output_folder_that_cannot_be_written_fails_before_loading(tiny, tmp_path, capsys, no_loading):  # noqa: F811
    (tmp_path / "a_file").write_text("x")
    assert _generate(tiny, tmp_path / "a_file" / "out") == 2
    assert "a_file" in capsys.readouterr().err


def _with_nan(source, target, name_part):
    tensors = load_file(source)
    name = next(key for key in sorted(tensors) if name_part in key and tensors[key].is_floating_point())
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = float("nan")
    with safe_open(source, "pt") as opened:  # keep the metadata
        metadata = opened.metadata()
    save_file(tensors, target, metadata=metadata)
    return name


def test_a_transformer_file_with_one_nan_weight_is_named_when_it_loads(tiny, tmp_path, capsys):  # noqa: F811
    models = tmp_path / "models"
    shutil.copytree(tiny.comfy_models, models)
    path = models / COMFY_FILES["transformer"]
    _with_nan(path, path, "blocks.0.self_attn.q.weight")  # named as the model's parameter
    with pytest.raises(ValueError, match=r"holds NaN or infinite values in 1 tensor\(s\) \(blocks.0.attn1.to_q.weight\)"):
        load_transformer(path, model_cls=FourDNeXTransformer3DModel, dtype=torch.float32)
    assert main(["generate", str(EXAMPLE), "--out", str(tmp_path / "out"), "--models", str(models), *SMALL]) == 2
    assert "holds NaN or infinite values" in capsys.readouterr().err
    assert not (tmp_path / "out" / "scene.npz").exists()


def test_a_lora_holding_nan_is_named_when_it_loads(tiny, tmp_path, capsys):  # noqa: F811
    lora = tmp_path / "nan_lora.safetensors"
    _with_nan(tiny.comfy_lora, lora, "lora")
    with pytest.raises(ValueError, match="nan_lora.safetensors holds NaN or infinite values"):
        read_lora(lora)
    assert _generate(tiny, tmp_path / "out", "--lora", str(lora)) == 2
    assert "holds NaN or infinite values" in capsys.readouterr().err


def test_non_finite_screen_by_dtype():
    fp8 = torch.zeros(8, dtype=torch.float8_e4m3fn)
    fp8_nan = fp8.clone()
    fp8_nan.view(torch.uint8)[3] = 0x7F
    e5m2_inf = torch.tensor([1.0, float("inf")]).to(torch.float8_e5m2)
    big_fp16 = torch.full((100_000,), 60000.0, dtype=torch.float16)  # finite, though its fp16 sum is inf
    tensors = {"fp8": fp8, "fp8_nan": fp8_nan, "e5m2_inf": e5m2_inf, "big_fp16": big_fp16,
               "fp16_inf": torch.tensor([1.0, float("-inf")], dtype=torch.float16),
               "bf16_nan": torch.tensor([float("nan")], dtype=torch.bfloat16), "ints": torch.arange(3),
               "fp32": torch.randn(5)}
    assert non_finite_tensors(tensors) == ["fp8_nan", "e5m2_inf", "fp16_inf", "bf16_nan"]


def test_a_pickle_given_as_a_model_is_called_a_pickle_not_a_truncated_download(tmp_path):
    pickled = tmp_path / "model.safetensors"
    torch.save({"w": torch.ones(2)}, pickled)
    with pytest.raises(CorruptSafetensorsError, match="PyTorch .pt/.pth/.ckpt/.bin file.*never read"):
        read_header(pickled)
    # a real safetensors file whose header length starts with the pickle byte 0x80 still reads
    for pad in range(200):
        path = tmp_path / "x.safetensors"
        save_file({"w": torch.ones(2)}, path, metadata={"pad": "p" * pad})
        if path.read_bytes()[0] == 0x80:
            assert read_header(path).entries["w"].shape == (2,)
            break
    else:
        pytest.fail("no header length with a 0x80 first byte was tried")


class _Exploding(torch.nn.Module):
    """Stands in for the transformer: a finite velocity, then NaN from call ``nan_from``."""

    def __init__(self, nan_from: int):
        super().__init__()
        self.calls, self.nan_from = 0, nan_from

    def forward(self, hidden_states, timestep, encoder_hidden_states, encoder_hidden_states_image, return_dict):
        self.calls += 1
        velocity = torch.zeros_like(hidden_states[:, :16])
        return (velocity * float("nan") if self.calls >= self.nan_from else velocity,)


def _conditioning(**changes):
    values = dict(condition=torch.zeros(1, 20, 2, 4, 8), prompt_embeds=torch.zeros(1, 512, 8),
                  image_embeds=torch.zeros(1, 257, 8))
    values.update(changes)
    return Conditioning(**values)


def test_a_non_finite_latent_stops_sampling_at_its_step():
    settings = SamplingSettings(num_inference_steps=4, guidance_scale=1.0, sampler="euler")
    with pytest.raises(NonFiniteLatentError, match="at step 2 of 4, from the transformer's prediction"):
        sample(_Exploding(nan_from=2), _conditioning(), settings, progress=False)
    nan_text = torch.zeros(1, 512, 8)
    nan_text[0, 3, 1] = float("nan")
    with pytest.raises(NonFiniteLatentError, match="prompt_embeds hold NaN or infinite values, from the text encoder"):
        sample(_Exploding(nan_from=99), _conditioning(prompt_embeds=nan_text), settings, progress=False)


def test_job_size_bound():
    at_release = job_memory(49, 480, 720, inner_dim=5120, ffn_dim=13824, dtype=torch.bfloat16)
    assert at_release.device == 13 * 30 * 90 * (13824 + 2 * 5120) * 2  # 1.57 GiB of feed-forward activations
    assert at_release.host == 49 * 480 * 1440 * 3 * 4
    with pytest.raises(ValueError, match=r"100001 frames at 480x720 need at least .* GiB .*at most \d+ frames can fit"):
        check_job_fits(100001, 480, 720, device="cpu", dtype=torch.float32, inner_dim=5120, ffn_dim=13824)
    check_job_fits(5, 32, 48, device="cpu", dtype=torch.float32, inner_dim=24, ffn_dim=32)


def test_text_encoder_auto_precision_follows_the_file_on_the_cpu(tiny, tmp_path):  # noqa: F811
    fp16_file = tiny.comfy_models / COMFY_FILES["text_encoder"]
    assert stored_precision(fp16_file) == torch.float16
    assert text_encoder_precision("auto", "cpu", fp16_file) == torch.bfloat16  # not fp32: half the memory
    assert text_encoder_precision("auto", "cuda", fp16_file) == torch.bfloat16
    assert text_encoder_precision("fp32", "cpu", fp16_file) == torch.float32  # asked for
    fp32_folder = tiny.diffusers_model / "text_encoder"
    assert stored_precision(fp32_folder) == torch.float32
    assert text_encoder_precision("auto", "cpu", fp32_folder) == torch.float32
    pipeline = load_pipeline(ModelLocations(root=tiny.comfy_models), dtype=torch.float32, text_encoder_dtype="auto")
    assert pipeline.text_encoder.dtype == torch.bfloat16 and pipeline.transformer.dtype == torch.float32
    result = pipeline(load_image(EXAMPLE), "a ball", num_frames=5, height=32, width=48,
                      settings=SamplingSettings(num_inference_steps=2))
    assert np.isfinite(result.xyz.numpy()).all()
