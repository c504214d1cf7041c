"""Header validation and tensor reading for safetensors files, against files safetensors writes."""

import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from fourdnex_core.loading.safetensors_io import (
    CorruptSafetensorsError,
    SafetensorsReader,
    component_metadata,
    iter_tensors,
    merge_headers,
    read_component_metadata,
    read_header,
)

_DTYPE_NAMES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float8_e4m3fn: "F8_E4M3"}


def write_sparse_safetensors(path, shapes, dtype=torch.bfloat16, metadata=None):
    """A valid safetensors file of zeros whose data is a sparse hole: real-size layouts cost no disk.

    ``shapes``: {name: shape}. Used to check detection on the real 14B layouts without weights.
    """
    header, offset = {}, 0
    itemsize = torch.empty((), dtype=dtype).element_size()
    for name, shape in shapes.items():
        size = itemsize * int(torch.Size(shape).numel())
        header[name] = {"dtype": _DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(raw)) + raw)
        handle.truncate(8 + len(raw) + offset)
    return path


@pytest.fixture
def mixed_file(tmp_path):
    """A file with every dtype the loaders meet, a scalar, an empty tensor and metadata."""
    generator = torch.Generator().manual_seed(0)
    tensors = {
        "a.weight": torch.randn(5, 7, generator=generator),
        "a.bf16": torch.randn(3, 4, generator=generator).to(torch.bfloat16),
        "a.f16": torch.randn(6, generator=generator).to(torch.float16),
        "fp8.weight": torch.randn(4, 8, generator=generator).to(torch.float8_e4m3fn),
        "fp8.scale_weight": torch.tensor(0.25),
        "marker": torch.empty(0, dtype=torch.float8_e4m3fn),
        "ids": torch.arange(10, dtype=torch.int64),
    }
    path = tmp_path / "mixed.safetensors"
    save_file(tensors, path, metadata={"fourdnex_config": json.dumps({"component": "vae", "config": {"z_dim": 16}})})
    return path, tensors


def test_header_matches_what_safetensors_wrote(mixed_file):
    path, tensors = mixed_file
    header = read_header(path)
    assert set(header.entries) == set(tensors)
    for name, tensor in tensors.items():
        assert header.entries[name].dtype == tensor.dtype
        assert header.entries[name].shape == tuple(tensor.shape)
    assert read_component_metadata(header) == ("vae", {"z_dim": 16})


def test_reader_returns_bitwise_equal_tensors(mixed_file):
    path, tensors = mixed_file
    reference = load_file(path)
    with SafetensorsReader() as reader:
        for name, entry in read_header(path).entries.items():
            value = reader.read(entry)
            assert value.dtype == tensors[name].dtype and value.shape == tensors[name].shape
            assert torch.equal(value.reshape(-1).view(torch.uint8), reference[name].reshape(-1).view(torch.uint8)), name


def test_iter_tensors_reads_in_file_order_across_shards(tmp_path):
    save_file({"z": torch.ones(3), "a": torch.zeros(2)}, tmp_path / "one.safetensors")
    save_file({"m": torch.full((4,), 2.0)}, tmp_path / "two.safetensors")
    headers = [read_header(tmp_path / "one.safetensors"), read_header(tmp_path / "two.safetensors")]
    entries = merge_headers(headers)
    read = [(entry.name, tensor.sum().item()) for entry, tensor in iter_tensors(entries.values(), description="t")]
    begins = [entries[name].begin for name, _ in read[:2]]
    assert begins == sorted(begins) and read[2] == ("m", 8.0)
    assert dict(read) == {"z": 3.0, "a": 0.0, "m": 8.0}


def test_a_name_in_two_shards_is_an_error(tmp_path):
    save_file({"w": torch.ones(1)}, tmp_path / "one.safetensors")
    save_file({"w": torch.ones(1)}, tmp_path / "two.safetensors")
    with pytest.raises(CorruptSafetensorsError, match="also stored in one.safetensors"):
        merge_headers([read_header(tmp_path / "one.safetensors"), read_header(tmp_path / "two.safetensors")])


def test_component_metadata_round_trip_drops_private_keys(tmp_path):
    metadata = component_metadata("transformer", {"num_layers": 2, "patch_size": (1, 2, 2), "_class_name": "X"})
    save_file({"w": torch.ones(1)}, tmp_path / "m.safetensors", metadata=metadata)
    assert read_component_metadata(read_header(tmp_path / "m.safetensors")) == (
        "transformer",
        {"num_layers": 2, "patch_size": [1, 2, 2]},
    )


def _rewrite_header(path, header_bytes, data=b""):
    path.write_bytes(struct.pack("<Q", len(header_bytes)) + header_bytes + data)


def test_header_length_beyond_file_is_reported(tmp_path):
    path = tmp_path / "wan2.1_i2v_480p_14B_bf16.safetensors"
    path.write_bytes(struct.pack("<Q", 10**9) + b"{}")
    with pytest.raises(CorruptSafetensorsError, match=r"wan2.1_i2v_480p_14B_bf16.*header length.*download it again"):
        read_header(path)


def test_bad_json_is_reported(tmp_path):
    path = tmp_path / "bad.safetensors"
    _rewrite_header(path, b'{"w": {"dtype": "F32", ')
    with pytest.raises(CorruptSafetensorsError, match=r"bad.safetensors.*not valid JSON.*download it again"):
        read_header(path)


def test_truncated_file_is_reported(mixed_file, tmp_path):
    path, _ = mixed_file
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[:-16])
    with pytest.raises(CorruptSafetensorsError, match=r"truncated.safetensors.*ends at byte.*download it again"):
        read_header(truncated)


def test_offsets_that_disagree_with_dtype_and_shape_are_reported(tmp_path):
    path = tmp_path / "lying.safetensors"
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}).encode()
    _rewrite_header(path, header, bytes(16))
    with pytest.raises(CorruptSafetensorsError, match="needs 16 bytes"):
        read_header(path)


def test_unsupported_dtype_names_the_fix(tmp_path):
    path = tmp_path / "fp4.safetensors"
    _rewrite_header(path, json.dumps({"w": {"dtype": "F4", "shape": [2], "data_offsets": [0, 1]}}).encode(), bytes(1))
    with pytest.raises(CorruptSafetensorsError, match="use a bf16, fp16 or fp8 file"):
        read_header(path)


def test_tiny_and_missing_files(tmp_path):
    (tmp_path / "empty.safetensors").write_bytes(b"abc")
    with pytest.raises(CorruptSafetensorsError, match="too short"):
        read_header(tmp_path / "empty.safetensors")
    with pytest.raises(FileNotFoundError, match="nothere.safetensors does not exist"):
        read_header(tmp_path / "nothere.safetensors")


def test_sparse_files_are_valid_and_read_as_zeros(tmp_path):
    path = write_sparse_safetensors(tmp_path / "big.safetensors", {"w": (4096, 4096), "b": (3,)})
    header = read_header(path)
    assert header.entries["w"].nbytes == 4096 * 4096 * 2
    assert header.entries["b"].end == path.stat().st_size
    with SafetensorsReader() as reader:
        assert not reader.read(header.entries["b"]).any()
