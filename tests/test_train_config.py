"""Trainer config: the example loads, bad keys/types/values are clear errors, overrides work."""

from pathlib import Path

import pytest

from fourdnex_train.cli import main
from fourdnex_train.config import ConfigError, config_from_dict, load_config, parse_override_value

EXAMPLE = Path(__file__).resolve().parents[1] / "fourdnex_train" / "example_config.toml"


def test_example_config_loads_with_release_defaults():
    config = load_config(EXAMPLE)
    assert config.lora.rank == 64 and config.lora.alpha == 32.0
    assert config.optim.lr == 2e-5 and config.optim.betas == [0.9, 0.95] and config.optim.weight_decay == 1e-4
    assert config.data.num_frames == 49 and (config.data.height, config.data.width) == (480, 720)
    assert config.data.cache_dir.is_absolute()  # relative paths resolved against the config's folder
    assert config.memory.low_vram_options().exact and config.memory.blocks_to_swap == 0  # low VRAM is opt-in
    swapped = load_config(EXAMPLE, {"memory.blocks_to_swap": -1, "memory.fp8": "weights"}).memory.low_vram_options()
    assert swapped.blocks_to_swap == "auto" and swapped.fp8 == "weights"


def test_overrides_replace_keys_and_are_validated():
    config = load_config(EXAMPLE, {"optim.lr": parse_override_value("1e-4"), "train.max_steps": 300,
                                   "lora.target_modules": parse_override_value('["to_q", "to_v"]'),
                                   "data.root": parse_override_value("/data/clips")})
    assert config.optim.lr == 1e-4 and config.train.max_steps == 300
    assert config.lora.target_modules == ["to_q", "to_v"] and str(config.data.root) == "/data/clips"
    with pytest.raises(ConfigError, match="must be an integer"):
        load_config(EXAMPLE, {"train.max_steps": "many"})


@pytest.mark.parametrize(("raw", "message"), [
    ({"optim": {"learning_rate": 1e-4}}, "Unknown key 'learning_rate' in \\[optim\\].*Valid keys: lr"),
    ({"train": {"lr": 1e-4}}, "It belongs in \\[optim\\]"),
    ({"trainer": {}}, "Unknown section"),
    ({"data": {"num_frames": 48}}, "4k\\+1.*use 45 or 49"),
    ({"optim": {"scheduler": "linear"}}, "use one of: constant, constant_with_warmup, cosine"),
    ({"lora": {"rank": "64"}}, "must be an integer"),
    ({"data": {"percentiles": [98, 2]}}, "0 <= low < high <= 100"),
    ({"sample": {"sampler": "ddim"}}, "\\[sample\\] sampler = 'ddim' is not supported; use one of: unipc, euler"),
    ({"checkpoint": {"resume": " "}}, 'use "auto", "none" or a checkpoint folder'),
    ({"memory": {"fp8": "matmul"}}, 'fp8 = "matmul" cannot train.*no backward pass.*fp8 = "weights"'),
    ({"memory": {"attention": "sage"}}, "'sage' cannot train.*no backward.*\"sdpa\""),
    ({"memory": {"attention": "flashy"}}, "attention = 'flashy' is not supported; use one of: sdpa, math"),
    ({"memory": {"blocks_to_swap": -2}}, "block count >= 0, or -1 for auto"),
    ({"memory": {"vae_tile_overlap": 256}}, "\\[memory\\] .*overlap"),
    ({"memory": {"blocks_to_swap": 4}, "train": {"gradient_checkpointing": False}},
     "blocks_to_swap needs \\[train\\] gradient_checkpointing = true"),
    ({"memory": {"offload_activations": True}, "train": {"gradient_checkpointing": False}},
     "offload_activations needs \\[train\\] gradient_checkpointing = true"),
])
def test_bad_config_errors_name_problem_and_fix(raw, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw)


def test_missing_keys_are_named_with_the_flag_to_set_them():
    config = config_from_dict({})
    with pytest.raises(ConfigError, match=r"needs \[data\] root, \[data\] cache_dir.*--data.root"):
        config.require("data.root", "data.cache_dir", command="prepare")


def test_cli_reports_config_errors_without_a_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nlearning_rate = 1\n")
    assert main(["run", str(bad)]) == 2
    assert "Unknown key 'learning_rate' in [train]" in capsys.readouterr().err
    assert main(["prepare", str(tmp_path / "missing.toml")]) == 2


def test_a_resume_folder_is_relative_to_the_config_file_not_the_cwd(tmp_path, monkeypatch):
    folder = tmp_path / "runs"
    folder.mkdir()
    (folder / "run.toml").write_text('[checkpoint]\nresume = "out/checkpoints/step-00000004"\n')
    monkeypatch.chdir(tmp_path)
    config = load_config(folder / "run.toml")
    assert config.checkpoint.resume == str(folder / "out" / "checkpoints" / "step-00000004")
    overridden = load_config(folder / "run.toml", {"checkpoint.resume": "other/step-00000002"})
    assert overridden.checkpoint.resume == str(folder / "other" / "step-00000002")
    for mode in ("auto", "none"):
        assert load_config(folder / "run.toml", {"checkpoint.resume": mode}).checkpoint.resume == mode
    assert config_from_dict({"checkpoint": {"resume": "/abs/step-00000001"}}).checkpoint.resume == "/abs/step-00000001"
