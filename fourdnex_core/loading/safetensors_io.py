"""Reading safetensors checkpoints tensor by tensor, and filling a meta-device model with them.

A safetensors file is an 8-byte little-endian header length ``N``, ``N`` bytes of JSON
(``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}``), then
the raw tensor bytes; offsets count from the end of the header.

- :func:`read_header` parses and validates the header without touching tensor data, so a 28 GB
  checkpoint is inspected in milliseconds, and a truncated or corrupt download fails with a
  message that names the file instead of a crash deep inside a loader.
- :class:`SafetensorsReader` reads one tensor at a time with plain file reads, into a fresh
  tensor or, for tensors about to be converted or moved to a GPU, into one reused staging
  buffer. The file's pages stay in the OS page cache, not in this process: converting a bf16
  file to fp32 peaks at the fp32 model plus one tensor. (safetensors' own ``safe_open`` maps
  the whole file; every page a dtype conversion touches then counts in the process's resident
  memory until the file is closed: measured at file size + model size.)
- :func:`build_empty_model` and :func:`assign_state_dict` build a model without allocating its
  weights and then hand it the tensors read from disk (``load_state_dict(assign=True)``), so
  the weights exist once in memory.
- Files written by this project carry their component and diffusers config in the metadata
  (:func:`component_metadata`), so any model size is recognised without guessing from shapes.
- :func:`write_safetensors` writes a file from a layout and a stream of tensors, one tensor in
  memory at a time, so a 11 GB checkpoint can be generated without holding it;
  :func:`save_tensors` writes a dict of tensors. Both write atomically.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import torch
from accelerate import init_empty_weights
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from fourdnex_core.atomic_write import atomic_path

# Metadata key under which this project stores {"component": ..., "config": {...}} as JSON.
FOURDNEX_METADATA_KEY = "fourdnex_config"

# safetensors refuses headers above 100 MB; a larger length means a corrupt file.
_MAX_HEADER_BYTES = 100_000_000

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


_DTYPE_NAMES: dict[torch.dtype, str] = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}

# A layout: tensor name -> (dtype, shape), in the order the tensors are stored.
TensorLayout = Mapping[str, tuple[torch.dtype, tuple[int, ...]]]


class CorruptSafetensorsError(ValueError):
    """A file that is not a readable safetensors file (truncated, corrupt, or another format)."""

    def __init__(self, path: Path, problem: str, fix: str | None = None) -> None:
        fix = fix or ("The file is probably truncated or corrupted (an interrupted download or copy): delete it "
                      "and download it again.")
        super().__init__(f"{path} is not a valid safetensors file: {problem}. {fix}")
        self.path = path


# Leading bytes of files people pass as models by mistake -> what they are.
_OTHER_FORMATS = (
    (b"PK\x03\x04", "a PyTorch .pt/.pth/.ckpt/.bin file (a zip of pickles)"),
    (b"\x80", "a pickle file (.pt/.pth/.ckpt/.bin/.pkl)"),
    (b"GGUF", "a GGUF file"),
    (b"\x89HDF", "an HDF5 file"),
)
_PICKLE_FIX = ("Pickled files can run code when loaded, so they are never read; use the .safetensors release of "
               "this file, or convert it on a machine you trust (safetensors.torch.save_file).")


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives: ``path`` and absolute byte range ``[begin, end)`` in the file."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    path: Path
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class SafetensorsHeader:
    """The validated header of one file: its tensors by name and its string metadata."""

    path: Path
    entries: dict[str, TensorEntry]
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Tensor shapes by name."""
        return {name: entry.shape for name, entry in self.entries.items()}


def read_header(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """Parse and validate the header of a safetensors file; no tensor data is read.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CorruptSafetensorsError: header length beyond the file, bad JSON, unknown dtype, byte
            ranges that do not match dtype x shape or run past the end of the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Model file {path} does not exist (or is not a file).")
    file_size = path.stat().st_size
    if file_size < 8:
        raise CorruptSafetensorsError(path, f"the file is {file_size} bytes, too short for a header")
    with open(path, "rb") as handle:
        first = handle.read(8)
        if handle.read(1) != b"{":  # a safetensors header is a JSON object; say what else the file is
            for magic, kind in _OTHER_FORMATS:
                if first.startswith(magic):
                    raise CorruptSafetensorsError(path, f"it is {kind}", _PICKLE_FIX)
        handle.seek(8)
        (header_size,) = struct.unpack("<Q", first)
        if header_size > min(file_size - 8, _MAX_HEADER_BYTES):
            raise CorruptSafetensorsError(
                path, f"the header length field says {header_size} bytes but the file has {file_size} bytes"
            )
        raw = handle.read(header_size)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptSafetensorsError(path, f"the header is not valid JSON ({error})") from error
    if not isinstance(header, dict):
        raise CorruptSafetensorsError(path, "the header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CorruptSafetensorsError(path, "__metadata__ is not a mapping of strings")
    data_start = 8 + header_size
    entries = {name: _parse_entry(path, name, info, data_start, file_size) for name, info in header.items()}
    return SafetensorsHeader(path=path, entries=entries, metadata=metadata)


def _parse_entry(path: Path, name: str, info: Any, data_start: int, file_size: int) -> TensorEntry:
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
        raise CorruptSafetensorsError(path, f"tensor {name!r} has no dtype/shape/data_offsets")
    dtype = SAFETENSORS_DTYPES.get(info["dtype"])
    if dtype is None:
        raise CorruptSafetensorsError(
            path,
            f"tensor {name!r} has dtype {info['dtype']!r}, which this loader does not read "
            f"(supported: {', '.join(SAFETENSORS_DTYPES)}); use a bf16, fp16 or fp8 file",
        )
    shape, offsets = info["shape"], info["data_offsets"]
    if not (isinstance(shape, list) and all(isinstance(s, int) and s >= 0 for s in shape)):
        raise CorruptSafetensorsError(path, f"tensor {name!r} has an invalid shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        raise CorruptSafetensorsError(path, f"tensor {name!r} has invalid data_offsets {offsets!r}")
    begin, end = data_start + offsets[0], data_start + offsets[1]
    expected = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if offsets[0] < 0 or end - begin != expected:
        raise CorruptSafetensorsError(
            path, f"tensor {name!r} spans bytes {offsets} but {info['dtype']} x {shape} needs {expected} bytes"
        )
    if end > file_size:
        raise CorruptSafetensorsError(
            path, f"tensor {name!r} ends at byte {end} but the file ends at byte {file_size}"
        )
    return TensorEntry(name=name, dtype=dtype, shape=tuple(shape), path=path, begin=begin, end=end)


def merge_headers(headers: Sequence[SafetensorsHeader]) -> dict[str, TensorEntry]:
    """All entries of the shards of one checkpoint by name; a name in two shards is an error."""
    merged: dict[str, TensorEntry] = {}
    for header in headers:
        for name, entry in header.entries.items():
            if name in merged:
                raise CorruptSafetensorsError(
                    entry.path, f"tensor {name!r} is also stored in {merged[name].path.name}"
                )
            merged[name] = entry
    return merged


class SafetensorsReader:
    """Reads tensors from one or more safetensors files into CPU tensors.

    Use as a context manager; files are opened on first use and closed on exit::

        with SafetensorsReader() as reader:
            weight = reader.read(entry)   # torch.Tensor with entry.dtype and entry.shape
    """

    def __init__(self) -> None:
        self._handles: dict[Path, BinaryIO] = {}
        self._staging = torch.empty(0, dtype=torch.uint8)

    def __enter__(self) -> SafetensorsReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()
        self._staging = torch.empty(0, dtype=torch.uint8)

    def read(self, entry: TensorEntry, *, staged: bool = False) -> torch.Tensor:
        """The tensor ``entry`` describes, as a contiguous CPU tensor.

        With ``staged=False`` it is a new tensor. With ``staged=True`` it is a view into one
        staging buffer that the next staged read overwrites: for tensors about to be converted
        or moved to another device, so the temporary copies do not churn the allocator.
        """
        if entry.nbytes == 0:
            return torch.empty(entry.shape, dtype=entry.dtype)
        if staged:
            if self._staging.numel() < entry.nbytes:
                self._staging = torch.empty(entry.nbytes, dtype=torch.uint8)
            raw = self._staging[: entry.nbytes]
        else:
            raw = torch.empty(entry.nbytes, dtype=torch.uint8)
        buffer = memoryview(raw.numpy()).cast("B")
        handle = self._handle(entry.path)
        handle.seek(entry.begin)
        filled = 0
        while filled < entry.nbytes:
            count = handle.readinto(buffer[filled:])
            if not count:
                raise CorruptSafetensorsError(entry.path, f"the file ended while reading tensor {entry.name!r}")
            filled += count
        return raw.view(entry.dtype).reshape(entry.shape)

    def _handle(self, path: Path) -> BinaryIO:
        if path not in self._handles:
            self._handles[path] = open(path, "rb", buffering=0)  # noqa: SIM115 - closed in __exit__
        return self._handles[path]


def iter_tensors(
    entries: Iterable[TensorEntry],
    *,
    description: str,
    staged: Callable[[TensorEntry], bool] | None = None,
) -> Iterator[tuple[TensorEntry, torch.Tensor]]:
    """Yield ``(entry, tensor)`` for each entry, in file order, with a progress bar in bytes.

    Tensors are fresh CPU tensors, except for entries where ``staged(entry)`` is true: those
    are views into a reused staging buffer (see :meth:`SafetensorsReader.read`), valid until
    the next step; convert or copy them before asking for the next tensor.
    """
    ordered = sorted(entries, key=lambda entry: (str(entry.path), entry.begin))
    total = sum(entry.nbytes for entry in ordered)
    with SafetensorsReader() as reader, tqdm(
        total=total, unit="B", unit_scale=True, desc=description, leave=False
    ) as progress:
        for entry in ordered:
            yield entry, reader.read(entry, staged=staged is not None and staged(entry))
            progress.update(entry.nbytes)


def component_metadata(component: str, config: Mapping[str, Any]) -> dict[str, str]:
    """safetensors metadata recording what a file holds: ``{FOURDNEX_METADATA_KEY: json}``.

    ``config`` is a diffusers config; keys starting with ``_`` (diffusers bookkeeping) are dropped.
    """
    clean = {key: value for key, value in config.items() if not key.startswith("_")}
    return {FOURDNEX_METADATA_KEY: json.dumps({"component": component, "config": clean}, default=list)}


def read_component_metadata(header: SafetensorsHeader) -> tuple[str, dict[str, Any]] | None:
    """``(component, config)`` stored by :func:`component_metadata`, or ``None`` if absent."""
    raw = header.metadata.get(FOURDNEX_METADATA_KEY)
    if raw is None:
        return None
    try:
        record = json.loads(raw)
        return str(record["component"]), dict(record["config"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise CorruptSafetensorsError(
            header.path, f"the {FOURDNEX_METADATA_KEY!r} metadata is not valid ({error})"
        ) from error


def stored_config(header: SafetensorsHeader, component: str, what: str) -> dict[str, Any] | None:
    """The config a file written by this project records for ``component`` (None when the file
    records none); a ValueError naming the loader to use when it records another component.

    what: the component in words for the message, e.g. ``"a text encoder"``.
    """
    stored = read_component_metadata(header)
    if stored is None:
        return None
    found, config = stored
    if found != component:
        raise ValueError(f"{header.path} holds a {found!r}, not {what}; load it with the {found} loader")
    return config


def build_empty_model(model_cls: type[nn.Module], config: Mapping[str, Any]) -> nn.Module:
    """``model_cls.from_config(config)`` with parameters on the meta device (no weight memory).

    Buffers (e.g. RoPE tables, not stored in checkpoints) are built normally on the CPU.
    """
    with init_empty_weights(include_buffers=False):
        return model_cls.from_config(dict(config))


def assign_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], *, source: Path) -> None:
    """Make ``state_dict``'s tensors the parameters of a ``model`` from :func:`build_empty_model` (no copy).

    The tensors keep their dtype and device. A missing key, an unexpected key or a shape
    mismatch raises a ``ValueError`` that names ``source`` and a few offending keys.
    """
    expected = model.state_dict()
    mismatched = [
        f"{name}: file {tuple(tensor.shape)}, model {tuple(expected[name].shape)}"
        for name, tensor in state_dict.items()
        if name in expected and tensor.shape != expected[name].shape
    ]
    if mismatched:
        raise ValueError(
            f"{source} does not match its model config; tensor shapes differ: {_few(mismatched)}. "
            "The file and its config.json (or its metadata) come from different models."
        )
    missing = [name for name in expected if name not in state_dict]
    unexpected = [name for name in state_dict if name not in expected]
    if missing or unexpected:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing tensors ({_few(missing)})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected tensors ({_few(unexpected)})")
        raise ValueError(
            f"{source} does not fit {type(model).__name__}: {' and '.join(problems)}. "
            "The file is incomplete or holds a different model; download the original file again."
        )
    check_finite(state_dict, source)
    model.load_state_dict(state_dict, strict=True, assign=True)


# fp8 bytes whose (byte | mask) == 0xFF are NaN (e4m3fn: all 7 low bits set) or NaN/inf (e5m2: exponent all set)
_FP8_NON_FINITE_MASKS = {torch.float8_e4m3fn: 0x80, torch.float8_e5m2: 0x83}


def non_finite_tensors(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating tensors holding NaN or infinite values.

    Each tensor is screened by its sum (NaN and inf propagate into it: 0.2 s per GiB of bf16 on
    two CPU cores, far less on a GPU) and checked exactly only when the sum is not finite (a
    large fp16 sum may overflow); fp8 tensors by their bit patterns (0.8 s per GiB on two cores).
    """
    broken = []
    for name, tensor in tensors.items():
        if tensor.dtype in _FP8_NON_FINITE_MASKS:
            mask = _FP8_NON_FINITE_MASKS[tensor.dtype]
            if tensor.numel() and int((tensor.view(torch.uint8) | mask).max()) == 0xFF:
                broken.append(name)
        elif tensor.is_floating_point() and not torch.isfinite(tensor.sum()):
            if not torch.isfinite(tensor).all():
                broken.append(name)
    return broken


def check_finite(tensors: Mapping[str, torch.Tensor], source: str | os.PathLike[str]) -> None:
    """Raise a ValueError naming ``source`` and its tensors that hold NaN or infinite values: a
    model with one NaN weight gives an all-NaN result, so it is refused when it loads."""
    broken = non_finite_tensors(tensors)
    if broken:
        raise ValueError(f"{source} holds NaN or infinite values in {len(broken)} tensor(s) ({_few(broken)}): the "
                         "file is damaged or was saved from a diverged training run. Download it again or use "
                         "another file.")


def _few(names: Sequence[str], count: int = 5) -> str:
    shown = ", ".join(names[:count])
    return shown + (f", ... ({len(names) - count} more)" if len(names) > count else "")


def write_safetensors(
    path: str | os.PathLike[str],
    layout: TensorLayout,
    tensors: Iterable[tuple[str, torch.Tensor]],
    *,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write a safetensors file whose tensors arrive one at a time (a generator), in ``layout`` order.

    The header is built from ``layout`` alone and written first; each tensor is then checked
    against its layout entry and its bytes appended, so memory holds one tensor at a time. The
    file is written through :func:`fourdnex_core.atomic_write.atomic_path`, so an interrupted
    write leaves ``path`` as it was. The result reads back with ``safetensors`` and
    :func:`read_header` like a file from ``safetensors.torch.save_file``.

    Args:
        path: output ``.safetensors`` file (parent folders are created).
        layout: ``{name: (dtype, shape)}`` of every tensor, in storage order.
        tensors: ``(name, tensor)`` pairs in the same order; CPU or not, any memory layout.
        metadata: string metadata stored under ``__metadata__``.

    Raises:
        ValueError: a tensor out of order or with another dtype or shape than its layout entry,
            a dtype safetensors cannot store, or fewer or more tensors than the layout lists.
    """
    path = Path(path)
    header: dict[str, Any] = {}
    offset = 0
    for name, (dtype, shape) in layout.items():
        if dtype not in _DTYPE_NAMES:
            raise ValueError(f"tensor {name!r} has dtype {dtype}, which safetensors cannot store")
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        header[name] = {"dtype": _DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    if metadata:
        header["__metadata__"] = dict(metadata)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # tensor data starts 8-byte aligned, as safetensors writes it
    expected = iter(layout.items())
    with atomic_path(path) as temporary:
        with open(temporary, "wb") as handle:
            handle.write(struct.pack("<Q", len(raw)) + raw)
            for name, tensor in tensors:
                _check_next(next(expected, None), name, tensor)
                data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
                handle.write(memoryview(data.numpy()))
        missing = next(expected, None)
        if missing is not None:
            raise ValueError(f"the tensor stream ended before {missing[0]!r}; every layout entry needs a tensor")
    return path


def save_tensors(
    path: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> Path:
    """``safetensors.torch.save_file`` of ``tensors`` (any device, any memory layout), atomically:
    an interrupted write leaves ``path`` as it was. Parent folders are created. Returns ``path``."""
    path = Path(path)
    contiguous = {name: tensor.detach().contiguous().cpu() for name, tensor in tensors.items()}
    with atomic_path(path) as temporary:
        save_file(contiguous, str(temporary), metadata=dict(metadata) if metadata else None)
    return path


def _check_next(
    expected: tuple[str, tuple[torch.dtype, tuple[int, ...]]] | None, name: str, tensor: torch.Tensor
) -> None:
    if expected is None:
        raise ValueError(f"tensor {name!r} is not in the layout (or comes after its last entry)")
    expected_name, (dtype, shape) = expected
    if name != expected_name:
        raise ValueError(f"got tensor {name!r} where the layout has {expected_name!r}; yield tensors in layout order")
    if tensor.dtype != dtype or tuple(tensor.shape) != tuple(shape):
        raise ValueError(
            f"tensor {name!r} is {tensor.dtype} x {tuple(tensor.shape)} but the layout says {dtype} x {tuple(shape)}"
        )
