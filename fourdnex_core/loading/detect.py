"""What a checkpoint holds, decided from its safetensors headers (no tensor data is read).

For every source the model config comes from, in order:

1. ``config.json`` of a diffusers component folder;
2. the ``fourdnex_config`` metadata that files written by this project carry (any size);
3. the tensor shapes, for the files users download. Shapes give the Wan facts (width from
   ``patch_embedding``, block count from the highest block index, 36 input channels and
   ``k_img`` for image-to-video, FFN/text/image widths); they are matched against the known
   Wan releases, and only the Wan2.1 I2V 14B layout is accepted: its config ships with the
   package (``fourdnex_core/configs/``). Another known release gets an error naming it; an
   unknown layout gets an error listing what was found.

Shapes are checked in all three cases, so a Wan2.1 T2V 1.3B folder with a valid config.json is
refused as clearly as the same model in a ComfyUI file.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from fourdnex_core.loading.locate import ModelSource, diffusers_weight_files, expected_locations
from fourdnex_core.loading.safetensors_io import (
    SafetensorsHeader,
    merge_headers,
    read_component_metadata,
    read_header,
)
from fourdnex_core.loading.wan_keys import original_to_diffusers, strip_original_prefix

logger = logging.getLogger(__name__)

KeyStyle = Literal["original", "diffusers"]
Fp8Kind = Literal["none", "e4m3fn", "e5m2", "scaled"]

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
TRANSFORMER_CONFIG_FILE = "wan2.1_i2v_14b_480p_transformer.json"
VAE_CONFIG_FILE = "wan2.1_vae.json"
I2V_14B = "Wan2.1 I2V 14B"
WAN_HEAD_DIM = 128  # every Wan2.1/2.2 transformer uses 128-wide attention heads

# Tensors of ComfyUI fp8-scaled files that are not model parameters.
SCALE_SUFFIX = "scale_weight"
IGNORED_SUFFIXES = ("scale_input",)
SCALED_FP8_MARKER = "scaled_fp8"

_BLOCK_INDEX = re.compile(r"^blocks\.(\d+)\.")


class UnsupportedModelError(ValueError):
    """A readable checkpoint that holds something other than the model asked for."""


@dataclass(frozen=True)
class TransformerFacts:
    """Architecture facts read from the tensor shapes of a Wan transformer checkpoint."""

    inner_dim: int
    in_channels: int
    out_channels: int
    patch_size: tuple[int, int, int]
    num_layers: int
    ffn_dim: int
    text_dim: int
    freq_dim: int
    image_dim: int | None
    added_kv_proj_dim: int | None
    pos_embed_seq_len: int | None
    cross_attn_norm: bool
    vace: bool

    def describe(self) -> str:
        image = f"image conditioning {self.image_dim}-wide" if self.image_dim else "no image conditioning"
        return (
            f"width {self.inner_dim}, {self.num_layers} blocks, {self.in_channels} input channels, "
            f"FFN {self.ffn_dim}, text {self.text_dim}-wide, {image}"
        )


@dataclass(frozen=True)
class KnownTransformer:
    """A released Wan transformer, by the facts that tell the releases apart."""

    name: str
    inner_dim: int
    in_channels: int
    num_layers: int
    image: bool
    pos_embed: bool = False


KNOWN_TRANSFORMERS: tuple[KnownTransformer, ...] = (
    KnownTransformer("Wan2.1 T2V 1.3B", 1536, 16, 30, image=False),
    KnownTransformer("Wan2.1 T2V 14B (or Wan2.2 T2V A14B)", 5120, 16, 40, image=False),
    # The 480P and 720P I2V models have identical shapes.
    KnownTransformer(I2V_14B, 5120, 36, 40, image=True),
    KnownTransformer("Wan2.1 FLF2V 14B", 5120, 36, 40, image=True, pos_embed=True),
    KnownTransformer("Wan2.2 I2V A14B", 5120, 36, 40, image=False),
    KnownTransformer("Wan2.2 TI2V 5B", 3072, 48, 30, image=False),
)


@dataclass(frozen=True)
class VaeFacts:
    """Architecture facts read from the tensor shapes of a Wan VAE checkpoint."""

    base_dim: int
    in_channels: int
    z_dim: int


KNOWN_VAES: dict[str, VaeFacts] = {
    "Wan2.1 VAE": VaeFacts(base_dim=96, in_channels=3, z_dim=16),
    "Wan2.2 VAE": VaeFacts(base_dim=160, in_channels=12, z_dim=48),
}


@dataclass(frozen=True)
class TransformerCheckpoint:
    """A transformer checkpoint, inspected: where its tensors are and how to read them.

    Attributes:
        config: diffusers ``WanTransformer3DModel`` config.
        key_style: ``"original"`` (Wan/ComfyUI names, maybe prefixed) or ``"diffusers"``.
        fp8: ``"none"``, ``"e4m3fn"`` / ``"e5m2"`` (fp8 weights) or ``"scaled"`` (fp8 weights + scales).
        variant: the known release it matches (e.g. ``"Wan2.1 I2V 14B"``) or ``None``.
    """

    source: ModelSource
    headers: tuple[SafetensorsHeader, ...]
    config: dict[str, Any]
    key_style: KeyStyle
    fp8: Fp8Kind
    variant: str | None


@dataclass(frozen=True)
class VaeCheckpoint:
    """A VAE checkpoint, inspected; ``config`` is a diffusers ``AutoencoderKLWan`` config."""

    source: ModelSource
    headers: tuple[SafetensorsHeader, ...]
    config: dict[str, Any]
    key_style: KeyStyle


def packaged_config(file_name: str) -> dict[str, Any]:
    """A config shipped in ``fourdnex_core/configs/`` (e.g. :data:`TRANSFORMER_CONFIG_FILE`)."""
    return json.loads((CONFIG_DIR / file_name).read_text())


def guess_contents(names: Iterable[str]) -> str | None:
    """A short phrase for what a checkpoint with these tensor names holds, for error messages."""
    stripped = {strip_original_prefix(name) for name in names}
    if any("lora_" in name or ".lora." in name for name in stripped):
        return "a LoRA"
    if "patch_embedding.weight" in stripped:
        return "a Wan transformer"
    if stripped & {"encoder.conv1.weight", "encoder.conv_in.weight"}:
        return "a VAE"
    if "shared.weight" in stripped or any(name.startswith("encoder.block.") for name in stripped):
        return "a T5/UMT5 text encoder"
    if any(name.startswith(("vision_model.", "visual.")) for name in stripped):
        return "a CLIP vision encoder"
    return None


def transformer_key_style(names: Iterable[str]) -> KeyStyle | None:
    """``"original"`` or ``"diffusers"`` naming of a Wan transformer checkpoint, ``None`` if neither."""
    stripped = {strip_original_prefix(name) for name in names}
    if "time_embedding.0.weight" in stripped:
        return "original"
    if "condition_embedder.time_embedder.linear_1.weight" in stripped:
        return "diffusers"
    return None


def transformer_name_to_diffusers(name: str, key_style: KeyStyle) -> str | None:
    """The diffusers name of a transformer tensor; ``None`` for the fp8 marker and ignored tensors.

    Names the mapping does not know are returned unchanged (after stripping a ComfyUI prefix),
    so extra tensors such as ``domain_embeddings`` pass through and unknown ones are reported
    by the loader as unexpected.
    """
    stripped = strip_original_prefix(name) if key_style == "original" else name
    if stripped == SCALED_FP8_MARKER or stripped.rpartition(".")[2] in IGNORED_SUFFIXES:
        return None
    if key_style == "diffusers":
        return stripped
    return original_to_diffusers(stripped) or stripped


def transformer_facts(shapes: Mapping[str, tuple[int, ...]], path: Path) -> TransformerFacts:
    """Facts from ``{diffusers name: shape}``; raises :class:`UnsupportedModelError` naming ``path``."""
    try:
        inner_dim, in_channels, *patch = shapes["patch_embedding.weight"]
        blocks = [int(m.group(1)) for name in shapes if (m := _BLOCK_INDEX.match(name))]
        image_norm = shapes.get("condition_embedder.image_embedder.norm1.weight")
        added_kv = shapes.get("blocks.0.attn2.add_k_proj.weight")
        pos_embed = shapes.get("condition_embedder.image_embedder.pos_embed")
        return TransformerFacts(
            inner_dim=inner_dim,
            in_channels=in_channels,
            out_channels=shapes["proj_out.weight"][0] // math.prod(patch),
            patch_size=tuple(patch),
            num_layers=max(blocks) + 1,
            ffn_dim=shapes["blocks.0.ffn.net.0.proj.weight"][0],
            text_dim=shapes["condition_embedder.text_embedder.linear_1.weight"][1],
            freq_dim=shapes["condition_embedder.time_embedder.linear_1.weight"][1],
            image_dim=None if image_norm is None else image_norm[0],
            added_kv_proj_dim=None if added_kv is None else added_kv[1],
            pos_embed_seq_len=None if pos_embed is None else pos_embed[1],
            cross_attn_norm="blocks.0.norm2.weight" in shapes,
            vace=any("vace" in name for name in shapes),
        )
    except (KeyError, ValueError, IndexError) as error:
        raise UnsupportedModelError(
            f"{path} looks like a Wan transformer but lacks expected tensors ({error}); the file is "
            f"incomplete or a modified model. Expected: {expected_locations('transformer')}."
        ) from error


def identify_transformer(facts: TransformerFacts) -> str | None:
    """The name of the known Wan release these facts match, or ``None``."""
    if facts.vace:
        return "Wan2.1 VACE"
    for known in KNOWN_TRANSFORMERS:
        sizes = (facts.inner_dim, facts.in_channels, facts.num_layers)
        if (
            (known.inner_dim, known.in_channels, known.num_layers) == sizes
            and known.image == (facts.image_dim is not None)
            and known.pos_embed == (facts.pos_embed_seq_len is not None)
        ):
            return known.name
    return None


def config_from_facts(facts: TransformerFacts) -> dict[str, Any]:
    """A diffusers ``WanTransformer3DModel`` config for a Wan release (128-wide heads assumed)."""
    return {
        "patch_size": list(facts.patch_size),
        "num_attention_heads": facts.inner_dim // WAN_HEAD_DIM,
        "attention_head_dim": WAN_HEAD_DIM,
        "in_channels": facts.in_channels,
        "out_channels": facts.out_channels,
        "text_dim": facts.text_dim,
        "freq_dim": facts.freq_dim,
        "ffn_dim": facts.ffn_dim,
        "num_layers": facts.num_layers,
        "cross_attn_norm": facts.cross_attn_norm,
        "qk_norm": "rms_norm_across_heads",
        "eps": 1e-6,
        "image_dim": facts.image_dim,
        "added_kv_proj_dim": facts.added_kv_proj_dim,
        "rope_max_seq_len": 1024,
        "pos_embed_seq_len": facts.pos_embed_seq_len,
    }


def inspect_transformer(source: ModelSource) -> TransformerCheckpoint:
    """Read the headers of a transformer source and decide its config, naming and fp8 format.

    Raises:
        UnsupportedModelError: the files hold another component, another Wan release, or an
            unknown layout; the message names the file and what was found.
        CorruptSafetensorsError, ModelNotFoundError: unreadable or missing files.
    """
    headers, config = _read_source(source, "transformer")
    entries = merge_headers(headers)
    key_style = transformer_key_style(entries)
    if key_style is None:
        contents = guess_contents(entries) or "no known model"
        raise UnsupportedModelError(
            f"{source.path} holds {contents}, not a Wan transformer. Expected: {expected_locations('transformer')}."
        )
    shapes = {}
    for name, entry in entries.items():
        target = transformer_name_to_diffusers(name, key_style)
        if target is not None and not target.endswith("." + SCALE_SUFFIX):
            shapes[target] = entry.shape
    facts = transformer_facts(shapes, source.path)
    variant = identify_transformer(facts)
    if variant is not None and variant != I2V_14B:
        raise UnsupportedModelError(
            f"{source.path} holds the {variant} transformer; 4DNeX needs the Wan2.1 I2V 14B 480P model. "
            f"Expected: {expected_locations('transformer')}."
        )
    if config is None:
        config = _config_for_plain_file(source.path, facts, variant)
    if variant == I2V_14B and "720p" in str(source.path).lower():
        logger.warning(
            "%s looks like the Wan2.1 I2V 14B 720P model; 4DNeX was trained on the 480P model "
            "(wan2.1_i2v_480p_14B_*.safetensors), results may differ.",
            source.path,
        )
    return TransformerCheckpoint(
        source=source,
        headers=headers,
        config=config,
        key_style=key_style,
        fp8=_fp8_kind(headers),
        variant=variant,
    )


def inspect_vae(source: ModelSource) -> VaeCheckpoint:
    """Read the headers of a VAE source and decide its config and naming (see module docs)."""
    headers, config = _read_source(source, "vae")
    entries = merge_headers(headers)
    if "encoder.conv1.weight" in entries and "conv2.weight" in entries:
        key_style: KeyStyle = "original"
        conv_in, post_quant = entries["encoder.conv1.weight"].shape, entries["conv2.weight"].shape
    elif "encoder.conv_in.weight" in entries and "post_quant_conv.weight" in entries:
        key_style = "diffusers"
        conv_in, post_quant = entries["encoder.conv_in.weight"].shape, entries["post_quant_conv.weight"].shape
    else:
        contents = guess_contents(entries) or "no known model"
        raise UnsupportedModelError(
            f"{source.path} holds {contents}, not a Wan VAE. Expected: {expected_locations('vae')}."
        )
    if len(conv_in) != 5:
        raise UnsupportedModelError(
            f"{source.path} holds a 2D image VAE (encoder input conv {list(conv_in)}), not the Wan video VAE. "
            f"Expected: {expected_locations('vae')}."
        )
    facts = VaeFacts(base_dim=conv_in[0], in_channels=conv_in[1], z_dim=post_quant[0])
    known = next((name for name, known_facts in KNOWN_VAES.items() if known_facts == facts), None)
    if known is not None and known != "Wan2.1 VAE":
        raise UnsupportedModelError(
            f"{source.path} holds the {known}; 4DNeX needs the Wan2.1 VAE. Expected: {expected_locations('vae')}."
        )
    if config is None:
        if known is None:
            raise UnsupportedModelError(
                f"{source.path}: unknown VAE layout ({asdict(facts)}); the Wan2.1 VAE has "
                f"{asdict(KNOWN_VAES['Wan2.1 VAE'])}. Expected: {expected_locations('vae')}."
            )
        config = packaged_config(VAE_CONFIG_FILE)
    return VaeCheckpoint(source=source, headers=headers, config=config, key_style=key_style)


def _read_source(source: ModelSource, component: str) -> tuple[tuple[SafetensorsHeader, ...], dict[str, Any] | None]:
    """The headers of a source's files and the config from config.json or metadata, if any."""
    if source.kind == "diffusers":
        headers = tuple(read_header(path) for path in diffusers_weight_files(source.path, component))
        config_path = source.path / "config.json"
        try:
            return headers, json.loads(config_path.read_text())
        except json.JSONDecodeError as error:
            raise UnsupportedModelError(f"{config_path} is not valid JSON ({error}); download it again.") from error
    header = read_header(source.path)
    recorded = read_component_metadata(header)
    if recorded is None:
        return (header,), None
    recorded_component, config = recorded
    if recorded_component != component:
        raise UnsupportedModelError(
            f"{source.path} holds a {recorded_component}, not a {component}. "
            f"Expected: {expected_locations(component)}."
        )
    return (header,), config


def _config_for_plain_file(path: Path, facts: TransformerFacts, variant: str | None) -> dict[str, Any]:
    """The shipped I2V 14B config if the shapes match it exactly; otherwise an error."""
    shipped = packaged_config(TRANSFORMER_CONFIG_FILE)
    derived = config_from_facts(facts)
    if variant == I2V_14B and all(shipped[key] == value for key, value in derived.items()):
        return shipped
    raise UnsupportedModelError(
        f"{path}: unknown transformer layout ({facts.describe()}). 4DNeX needs the Wan2.1 I2V 14B 480P "
        f"model (width 5120, 40 blocks, 36 input channels, 1280-wide image conditioning). "
        f"Expected: {expected_locations('transformer')}."
    )


def _fp8_kind(headers: Iterable[SafetensorsHeader]) -> Fp8Kind:
    names = [name for header in headers for name in header.entries]
    if any(name.endswith("." + SCALE_SUFFIX) or strip_original_prefix(name) == SCALED_FP8_MARKER for name in names):
        return "scaled"
    dtypes = {entry.dtype for header in headers for entry in header.entries.values()}
    if torch.float8_e4m3fn in dtypes:
        return "e4m3fn"
    return "e5m2" if torch.float8_e5m2 in dtypes else "none"
