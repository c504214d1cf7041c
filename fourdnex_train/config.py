"""The trainer's configuration: one TOML file, validated, every key overridable on the command line.

A config has up to nine sections, each a dataclass below (see ``fourdnex_train/README.md`` for every
key). Loading checks it strictly: an unknown key or section is an error that names the valid
keys (and the section where a misplaced key belongs), a value of the wrong type names the
expected type, and :meth:`TrainConfig.require` names the keys a command needs that are unset.

Command-line overrides use the dotted key: ``--optim.lr 1e-4 --train.max_steps 300``. A value is
read as a TOML literal (``1e-4``, ``true``, ``[0.9, 0.95]``, ``"text"``) and, if that fails, as a
plain string (so paths need no quotes).
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

from fourdnex_core.lowvram import LowVramOptions
from fourdnex_core.lowvram.options import options_of
from fourdnex_core.model_set import WanLocations
from fourdnex_core.lowvram.attention import BACKENDS as ATTENTION_BACKENDS
from fourdnex_core.representation import check_video_size
from fourdnex_core.schedulers import SAMPLERS

TIMESTEP_SAMPLINGS = ("uniform", "logit_normal")
SCHEDULERS = ("constant", "constant_with_warmup", "cosine")
MIXED_PRECISIONS = ("auto", "bf16", "fp32")
LAYOUTS = ("simple", "4dnex10m")
CONDITION_XYZ = ("init", "first_frame")
CACHE_DTYPES = ("bf16", "fp32")
MODEL_DTYPES = ("bf16", "fp16", "fp32")
RESUME_MODES = ("auto", "none")
TRAIN_FP8_MODES = ("off", "weights")
FORWARD_ONLY_ATTENTION = ("sage",)  # SageAttention kernels have no backward pass


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message says what to change."""


def _one_of(section: str, key: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"[{section}] {key} = {value!r} is not supported; use one of: {', '.join(choices)}.")


def _positive(section: str, key: str, value: float, *, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"[{section}] {key} must be {bound}, got {value}.")


@dataclasses.dataclass
class DataConfig:
    """Where the clips are, where their cache goes, and the training video size."""

    root: Path | None = None
    cache_dir: Path | None = None
    layout: str = "simple"
    num_frames: int = 49
    height: int = 480
    width: int = 720
    frame_stride: int = 1
    condition_xyz: str = "init"
    cache_dtype: str = "bf16"
    pointmap_style: bool = True
    percentiles: list[float] = dataclasses.field(default_factory=lambda: [2.0, 98.0])

    def __post_init__(self) -> None:
        _one_of("data", "layout", self.layout, LAYOUTS)
        _one_of("data", "condition_xyz", self.condition_xyz, CONDITION_XYZ)
        _one_of("data", "cache_dtype", self.cache_dtype, CACHE_DTYPES)
        _positive("data", "frame_stride", self.frame_stride)
        try:
            check_video_size(self.num_frames, self.height, self.width)
        except ValueError as error:
            raise ConfigError(f"[data] num_frames / height / width: {error}") from error
        if len(self.percentiles) != 2 or not 0 <= self.percentiles[0] < self.percentiles[1] <= 100:
            raise ConfigError(f"[data] percentiles must be [low, high] with 0 <= low < high <= 100, got "
                              f"{self.percentiles}; the release uses [2.0, 98.0].")


@dataclasses.dataclass
class ModelsConfig(WanLocations):
    """The Wan2.1 I2V weights (:class:`~fourdnex_core.model_set.WanLocations`: ``root`` serves every
    component, the others override it) and the dtype they are loaded in."""

    dtype: str = "bf16"

    def __post_init__(self) -> None:
        _one_of("models", "dtype", self.dtype, MODEL_DTYPES)


@dataclasses.dataclass
class LoraConfig:
    """The LoRA (peft) and the domain embeddings."""

    rank: int = 64
    alpha: float = 32.0
    target_modules: list[str] = dataclasses.field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    train_domain_embeddings: bool = True

    def __post_init__(self) -> None:
        _positive("lora", "rank", self.rank)
        _positive("lora", "alpha", self.alpha)
        if not self.target_modules:
            raise ConfigError("[lora] target_modules is empty; list module name suffixes such as "
                              '["to_q", "to_k", "to_v", "to_out.0"].')


@dataclasses.dataclass
class OptimConfig:
    """AdamW and the learning-rate schedule. Defaults are the release's."""

    lr: float = 2e-5
    betas: list[float] = dataclasses.field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 1e-4
    eps: float = 1e-8
    max_grad_norm: float = 1.0
    scheduler: str = "constant_with_warmup"
    warmup_steps: int = 100

    def __post_init__(self) -> None:
        _positive("optim", "lr", self.lr)
        _positive("optim", "weight_decay", self.weight_decay, allow_zero=True)
        _positive("optim", "max_grad_norm", self.max_grad_norm, allow_zero=True)
        _positive("optim", "warmup_steps", self.warmup_steps, allow_zero=True)
        _one_of("optim", "scheduler", self.scheduler, SCHEDULERS)
        if len(self.betas) != 2 or not all(0 <= beta < 1 for beta in self.betas):
            raise ConfigError(f"[optim] betas must be two numbers in [0, 1), got {self.betas}; e.g. [0.9, 0.95].")


@dataclasses.dataclass
class TrainLoopConfig:
    """Steps, batch, precision, timestep sampling and the output."""

    output_dir: Path | None = None
    output_name: str = "4dnex_lora"
    max_steps: int = 5000
    batch_size: int = 1
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = True
    mixed_precision: str = "auto"
    device: str = "auto"
    seed: int = 42
    timestep_sampling: str = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    flow_shift: float = 1.0
    save_diffusers_format: bool = False

    def __post_init__(self) -> None:
        for key in ("max_steps", "batch_size", "gradient_accumulation_steps", "flow_shift", "logit_std"):
            _positive("train", key, getattr(self, key))
        _one_of("train", "mixed_precision", self.mixed_precision, MIXED_PRECISIONS)
        _one_of("train", "timestep_sampling", self.timestep_sampling, TIMESTEP_SAMPLINGS)


@dataclasses.dataclass
class CheckpointConfig:
    """Periodic checkpoints (atomic, exact resume).

    resume: "auto" (the latest checkpoint of the output folder), "none", or a checkpoint folder
    (relative paths are taken from the config file's folder, like every other path).
    """

    every_n_steps: int = 500
    keep_last: int = 3
    resume: str = "auto"

    def __post_init__(self) -> None:
        _positive("checkpoint", "every_n_steps", self.every_n_steps, allow_zero=True)
        _positive("checkpoint", "keep_last", self.keep_last)


@dataclasses.dataclass
class LogConfig:
    """The CSV log is always written; TensorBoard when the package is installed."""

    tensorboard: bool = True
    progress: bool = True


@dataclasses.dataclass
class SampleConfig:
    """Optional sample generation during training, on the first cached clips' conditions."""

    every_n_steps: int = 0
    num_clips: int = 1
    num_inference_steps: int = 20
    flow_shift: float = 3.0
    sampler: str = "unipc"
    seed: int = 42
    decode: bool = False

    def __post_init__(self) -> None:
        _positive("sample", "every_n_steps", self.every_n_steps, allow_zero=True)
        _positive("sample", "num_clips", self.num_clips)
        _positive("sample", "num_inference_steps", self.num_inference_steps)
        _positive("sample", "flow_shift", self.flow_shift)
        _one_of("sample", "sampler", self.sampler, SAMPLERS)


@dataclasses.dataclass
class MemoryConfig:
    """Low-VRAM options for the frozen base transformer and the VAE (``fourdnex_core.lowvram``).

    The keys are the :class:`LowVramOptions` fields declared for the trainer (``options_of("train")``,
    help texts there; ``tests/test_lowvram_options.py`` checks they match) plus ``offload_activations``.

    blocks_to_swap: base blocks kept in CPU memory and brought to the GPU for their forward and
        again for their recomputation in backward (needs gradient checkpointing); -1: from free
        VRAM minus ``activation_reserve_gb`` (10 GiB: a training step keeps more than inference's 6;
        9.4 GiB simulated beside the weights for 25 x 320 x 480 on the 14B, 16.3 GiB for 49 x 480 x
        720 with ``offload_activations``). Exact.
    fp8: "off" or "weights" (frozen Linear weights stored in fp8, upcast one layer at a time;
        ComfyUI's fp8 files stay fp8). fp8 matmuls have no backward pass.
    offload_activations: keep the checkpointed block inputs in CPU memory until the backward pass
        (13.4 GiB of GPU memory for the 14B at 49 x 480 x 720; needs gradient checkpointing). Exact.
    attention: an attention backend with a backward pass (not "sage").
    compile: torch.compile the blocks.
    vae_tiling, vae_tile_size, vae_tile_overlap: tiled VAE for ``prepare`` and decoded samples.
    """

    blocks_to_swap: int = 0
    activation_reserve_gb: float = 10.0  # the step's activations, LoRA gradients and AdamW state (see the README)
    fp8: str = "off"
    offload_activations: bool = False
    attention: str = "sdpa"
    compile: bool = False
    vae_tiling: bool = False
    vae_tile_size: int = LowVramOptions.vae_tile_size
    vae_tile_overlap: int = LowVramOptions.vae_tile_overlap

    def __post_init__(self) -> None:
        if self.blocks_to_swap < -1:
            raise ConfigError(f"[memory] blocks_to_swap must be a block count >= 0, or -1 for auto; got "
                              f"{self.blocks_to_swap}.")
        if self.fp8 == "matmul":
            raise ConfigError('[memory] fp8 = "matmul" cannot train: fp8 matmuls (torch._scaled_mm) have no '
                              'backward pass. Use fp8 = "weights" (fp8 storage, bf16 matmuls).')
        _one_of("memory", "fp8", self.fp8, TRAIN_FP8_MODES)
        if self.attention in FORWARD_ONLY_ATTENTION:
            raise ConfigError(f"[memory] attention = {self.attention!r} cannot train: its kernels have no backward "
                              'pass. Use "sdpa", "flash", "flash3", "xformers" or "cudnn".')
        _one_of("memory", "attention", self.attention, list(ATTENTION_BACKENDS))
        _positive("memory", "activation_reserve_gb", self.activation_reserve_gb, allow_zero=True)
        try:
            self.low_vram_options()
        except ValueError as error:
            raise ConfigError(f"[memory] {error}") from error

    def low_vram_options(self) -> LowVramOptions:
        """These settings as the :class:`LowVramOptions` the inference side takes (the keys of
        :func:`~fourdnex_core.lowvram.options.options_of` ``("train")``; -1 is "auto")."""
        values = {field.name: getattr(self, field.name) for field in options_of("train")}
        for field in options_of("train"):
            if field.metadata["auto"] and values[field.name] == -1:
                values[field.name] = "auto"
        return LowVramOptions(**values)


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "models": ModelsConfig,
    "lora": LoraConfig,
    "optim": OptimConfig,
    "train": TrainLoopConfig,
    "checkpoint": CheckpointConfig,
    "log": LogConfig,
    "sample": SampleConfig,
    "memory": MemoryConfig,
}


@dataclasses.dataclass
class TrainConfig:
    """The whole configuration; one attribute per section."""

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    models: ModelsConfig = dataclasses.field(default_factory=ModelsConfig)
    lora: LoraConfig = dataclasses.field(default_factory=LoraConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    train: TrainLoopConfig = dataclasses.field(default_factory=TrainLoopConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    log: LogConfig = dataclasses.field(default_factory=LogConfig)
    sample: SampleConfig = dataclasses.field(default_factory=SampleConfig)
    memory: MemoryConfig = dataclasses.field(default_factory=MemoryConfig)

    def __post_init__(self) -> None:
        if self.memory.blocks_to_swap != 0 and not self.train.gradient_checkpointing:
            raise ConfigError("[memory] blocks_to_swap needs [train] gradient_checkpointing = true: swapped blocks "
                              "are loaded again for their recomputation in the backward pass.")
        if self.memory.offload_activations and not self.train.gradient_checkpointing:
            raise ConfigError("[memory] offload_activations needs [train] gradient_checkpointing = true: what it "
                              "offloads are the inputs the checkpointed blocks are recomputed from.")

    def require(self, *keys: str, command: str) -> None:
        """Raise a :class:`ConfigError` listing every dotted key (``"data.root"``) that is unset."""
        missing = [key for key in keys if _get(self, key) is None]
        if missing:
            listed = ", ".join(f"[{key.split('.')[0]}] {key.split('.')[1]}" for key in missing)
            flags = " ".join(f"--{key} ..." for key in missing)
            raise ConfigError(f"`fourdnex-train {command}` needs {listed}; add it to the config file or pass {flags}.")

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain TOML-able values (paths as strings, unset keys left out)."""
        out: dict[str, dict[str, Any]] = {}
        for name in SECTIONS:
            section = dataclasses.asdict(getattr(self, name))
            out[name] = {key: str(value) if isinstance(value, Path) else value
                         for key, value in section.items() if value is not None}
        return out


def _get(config: TrainConfig, dotted: str) -> Any:
    section, key = dotted.split(".")
    return getattr(getattr(config, section), key)


def _field_types(section_cls: type) -> dict[str, Any]:
    return typing.get_type_hints(section_cls)


def _has_default(field: dataclasses.Field) -> bool:
    return field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING


def _type_name(annotation: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", Path: "a path"}
    args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    if typing.get_origin(annotation) in (types.UnionType, typing.Union) and len(args) == 1:
        return names.get(args[0], str(args[0]))
    if typing.get_origin(annotation) is list:
        return f"a list of {_type_name(typing.get_args(annotation)[0]).removeprefix('a ').removeprefix('an ')}s"
    return names.get(annotation, str(annotation))


def _coerce(section: str, key: str, value: Any, annotation: Any, base: Path) -> Any:
    """``value`` as ``annotation`` (relative paths resolved against ``base``), or a ConfigError."""
    origin = typing.get_origin(annotation)
    args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    if origin in (types.UnionType, typing.Union) and len(args) == 1:
        return None if value is None else _coerce(section, key, value, args[0], base)
    ok = True
    if annotation is Path:
        ok = isinstance(value, (str, PathLike))
        if ok:
            path = Path(value).expanduser()
            return path if path.is_absolute() else base / path
    elif annotation is bool:
        ok = isinstance(value, bool)
    elif annotation is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif annotation is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif annotation is str:
        ok = isinstance(value, str)
    elif origin is list:
        ok = isinstance(value, (list, tuple))
        if ok:
            return [_coerce(section, key, item, typing.get_args(annotation)[0], base) for item in value]
    if not ok:
        raise ConfigError(f"[{section}] {key} must be {_type_name(annotation)}, got {value!r}.")
    return value


def _unknown_key_error(section: str, key: str) -> ConfigError:
    valid = [field.name for field in dataclasses.fields(SECTIONS[section])]
    homes = [name for name, cls in SECTIONS.items() if key in {f.name for f in dataclasses.fields(cls)}]
    hint = f" It belongs in [{homes[0]}]." if homes else ""
    close = difflib.get_close_matches(key, valid, n=1)
    hint += f" Did you mean {close[0]!r}?" if close and not homes else ""
    return ConfigError(f"Unknown key {key!r} in [{section}].{hint} Valid keys: {', '.join(valid)}.")


def config_from_dict(raw: Mapping[str, Any], *, base_dir: str | PathLike = ".") -> TrainConfig:
    """Validate a parsed TOML document and build the :class:`TrainConfig`.

    ``base_dir``: relative paths in the config are taken relative to it (the config file's folder).
    """
    base = Path(base_dir)
    unknown = [name for name in raw if name not in SECTIONS]
    if unknown:
        raise ConfigError(f"Unknown section(s) {', '.join(f'[{name}]' for name in unknown)}; valid sections: "
                          f"{', '.join(f'[{name}]' for name in SECTIONS)}.")
    sections = {}
    for name, cls in SECTIONS.items():
        values = raw.get(name, {})
        if not isinstance(values, Mapping):
            raise ConfigError(f"[{name}] must be a table of keys, got {values!r}.")
        hints = _field_types(cls)
        fields = {field.name: field for field in dataclasses.fields(cls)}
        for key in values:
            if key not in fields:
                raise _unknown_key_error(name, key)
        missing = [key for key, field in fields.items() if not _has_default(field) and key not in values]
        if missing:
            raise ConfigError(f"Missing key(s) {', '.join(missing)} in [{name}]; add them to the config.")
        kwargs = {key: _coerce(name, key, value, hints[key], base) for key, value in values.items()}
        sections[name] = cls(**kwargs)
    sections["checkpoint"].resume = _resolve_resume(sections["checkpoint"].resume, base)
    return TrainConfig(**sections)


def _resolve_resume(resume: str, base: Path) -> str:
    """``[checkpoint] resume``: a mode kept as is, a folder made absolute against ``base``."""
    if resume in RESUME_MODES:
        return resume
    if not resume.strip():
        raise ConfigError('[checkpoint] resume is empty; use "auto", "none" or a checkpoint folder (step-<n>).')
    folder = Path(resume).expanduser()
    return str(folder if folder.is_absolute() else base / folder)


def parse_override_value(text: str) -> Any:
    """A command-line value as a TOML literal, or the plain string if it is not one."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(raw: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``raw`` with ``{"section.key": value}`` overrides set (validated later)."""
    merged = {name: dict(values) for name, values in raw.items()}
    for dotted, value in overrides.items():
        section, _, key = dotted.partition(".")
        if section not in SECTIONS or not key:
            raise ConfigError(f"Override --{dotted}: use --section.key with a section among "
                              f"{', '.join(SECTIONS)} (e.g. --optim.lr 1e-4).")
        merged.setdefault(section, {})[key] = value
    return merged


def override_keys() -> list[str]:
    """Every dotted key a command line may override, e.g. ``"optim.lr"``."""
    return [f"{name}.{field.name}" for name, cls in SECTIONS.items() for field in dataclasses.fields(cls)]


def load_config(path: str | PathLike, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Read, override and validate a TOML config file. Relative paths are relative to its folder."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"No config file at {path}. Start from fourdnex_train/example_config.toml.")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path} is not valid TOML: {error}. Fix the line it names.") from error
    return config_from_dict(apply_overrides(raw, overrides or {}), base_dir=path.parent)
