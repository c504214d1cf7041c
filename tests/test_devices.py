"""Precisions by name: one table (``devices.DTYPES``) behind the CLI, the node inputs, the loaders and the trainer."""

import argparse
from pathlib import Path

import pytest
import torch

from fourdnex_core.cli import build_parser
from fourdnex_core.devices import DTYPES, dtype_named, resolve_dtype
from fourdnex_core.loading.text_encoder_loader import text_encoder_precision
from nodes import comfy_bridge
from nodes.loaders import FourDNeXCLIPVisionLoader, FourDNeXModelLoader, FourDNeXTextEncoderLoader

ROOT = Path(__file__).resolve().parents[1]


def test_names_and_dtypes():
    assert DTYPES == {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    for name, dtype in DTYPES.items():
        assert dtype_named(name) is dtype
        assert dtype_named(dtype) is dtype
    for bad in ("int8", "float32", torch.int8, None):
        with pytest.raises(ValueError, match=r"unsupported precision .*bf16, fp16, fp32"):
            dtype_named(bad)


def test_auto_follows_the_device():
    assert resolve_dtype("auto", torch.device("cuda")) is torch.bfloat16
    assert resolve_dtype("auto", torch.device("cpu")) is torch.float32
    assert resolve_dtype("fp16", torch.device("cpu")) is torch.float16


def test_nodes_take_the_same_table():
    for device in (torch.device("cpu"), torch.device("cuda")):
        for name in ("auto", *DTYPES):
            assert comfy_bridge.precision(name, device) is resolve_dtype(name, device)
    with pytest.raises(ValueError, match="unsupported precision 'int8'"):
        comfy_bridge.precision("int8", torch.device("cpu"))
    for loader in (FourDNeXModelLoader, FourDNeXTextEncoderLoader, FourDNeXCLIPVisionLoader):
        choices = loader.INPUT_TYPES()["required"]["precision"][0]
        assert choices == ["auto", *DTYPES], loader.__name__


def test_cli_and_text_encoder_take_the_same_table():
    parser = build_parser()
    generate = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    precision = next(a for a in generate.choices["generate"]._actions if a.dest == "precision")
    assert tuple(precision.choices) == ("auto", *DTYPES)
    for name, dtype in DTYPES.items():  # a named precision never reads the file
        assert text_encoder_precision(name, "cpu", "/nonexistent") is dtype


def test_one_table_in_the_source():
    """No module keeps its own name-to-dtype table (there were three)."""
    tables = [path.relative_to(ROOT).as_posix() for folder in ("fourdnex_core", "nodes", "fourdnex_train")
              for path in sorted((ROOT / folder).rglob("*.py"))
              if '"fp16": torch.float16' in path.read_text(encoding="utf-8")]
    assert tables == ["fourdnex_core/devices.py"]
