"""Parameter-name mapping between the original Wan2.1 VAE and diffusers' ``AutoencoderKLWan``.

The original VAE (``wan_2.1_vae.safetensors`` in ComfyUI) keeps its blocks in flat
``nn.Sequential`` lists; diffusers groups them. The facts:

================================================  ==================================================
original                                          diffusers
================================================  ==================================================
``conv1`` / ``conv2``                             ``quant_conv`` / ``post_quant_conv``
``{coder}.conv1``                                 ``{coder}.conv_in``
``{coder}.head.0`` / ``{coder}.head.2``           ``{coder}.norm_out`` / ``{coder}.conv_out``
``{coder}.middle.0`` / ``.1`` / ``.2``            ``{coder}.mid_block.resnets.0`` / ``attentions.0`` / ``resnets.1``
``encoder.downsamples.{k}``                       ``encoder.down_blocks.{k}`` (same flat index)
``decoder.upsamples.{k}``                         ``decoder.up_blocks.{k // g}.resnets.{k % g}``, or
                                                  ``.upsamplers.0`` for the last slot of a group
residual ``.residual.0/.2/.3/.6``, ``.shortcut``  ``.norm1/.conv1/.norm2/.conv2``, ``.conv_shortcut``
================================================  ==================================================

where a decoder group holds ``num_res_blocks + 1`` residual blocks and one resample, so
``g = num_res_blocks + 2``. This holds for the Wan2.1 VAE (``attn_scales=[]``, no attention
outside the middle blocks); the Wan2.2 VAE has another structure and is not covered.
Both functions are pure and map one parameter name; ``None`` means "not a Wan2.1 VAE name".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TypeVar

T = TypeVar("T")

_TOP_LEVEL = {"conv1": "quant_conv", "conv2": "post_quant_conv"}
_FIXED_BLOCKS = {
    "conv1": "conv_in",
    "head.0": "norm_out",
    "head.2": "conv_out",
    "middle.0": "mid_block.resnets.0",
    "middle.1": "mid_block.attentions.0",
    "middle.2": "mid_block.resnets.1",
}
_RESIDUAL_PARTS = {
    "residual.0": "norm1",
    "residual.2": "conv1",
    "residual.3": "norm2",
    "residual.6": "conv2",
    "shortcut": "conv_shortcut",
}
# Paths below a block whose names are the same on both sides (resample and attention parts).
_SHARED_PARTS = ("resample.1", "time_conv", "norm", "to_qkv", "proj")
_PARAMS = ("weight", "bias", "gamma")
_TOP_LEVEL_REVERSE = {d: o for o, d in _TOP_LEVEL.items()}
_FIXED_BLOCKS_REVERSE = {d: o for o, d in _FIXED_BLOCKS.items()}
_RESIDUAL_PARTS_REVERSE = {d: o for o, d in _RESIDUAL_PARTS.items()}

_ORIGINAL_NAME = re.compile(
    r"^(encoder|decoder)\.(conv1|head\.[02]|middle\.[012]|downsamples\.\d+|upsamples\.\d+)\.(.+)$"
)
_DIFFUSERS_NAME = re.compile(
    r"^(encoder|decoder)\.(conv_in|norm_out|conv_out|mid_block\.(?:resnets|attentions)\.\d+|down_blocks\.\d+"
    r"|up_blocks\.\d+\.(?:resnets\.\d+|upsamplers\.0))\.(.+)$"
)
_DECODER_SLOT = re.compile(r"^up_blocks\.(\d+)\.(?:resnets\.(\d+)|upsamplers\.0)$")


def _below_block(name: str, reverse: bool) -> str | None:
    """Map the part of a name below a block: residual parts renamed, the rest kept as is."""
    pairs = _RESIDUAL_PARTS_REVERSE if reverse else _RESIDUAL_PARTS
    path, _, param = name.rpartition(".")
    if param not in _PARAMS:
        return None
    if path in pairs:
        return f"{pairs[path]}.{param}"
    return name if path in ("", *_SHARED_PARTS) else None


def _top_level(name: str, reverse: bool) -> str | None:
    pairs = _TOP_LEVEL_REVERSE if reverse else _TOP_LEVEL
    path, _, param = name.partition(".")
    return f"{pairs[path]}.{param}" if path in pairs and param in _PARAMS else None


def _original_block_to_diffusers(coder: str, block: str, num_res_blocks: int) -> str | None:
    if block in _FIXED_BLOCKS:
        return _FIXED_BLOCKS[block]
    kind, _, index = block.partition(".")
    if kind == "downsamples" and coder == "encoder":
        return f"down_blocks.{index}"
    if kind == "upsamples" and coder == "decoder":
        group, slot = divmod(int(index), num_res_blocks + 2)
        return f"up_blocks.{group}.resnets.{slot}" if slot <= num_res_blocks else f"up_blocks.{group}.upsamplers.0"
    return None


def _diffusers_block_to_original(coder: str, block: str, num_res_blocks: int) -> str | None:
    if block in _FIXED_BLOCKS_REVERSE:
        return _FIXED_BLOCKS_REVERSE[block]
    if block.startswith("down_blocks.") and coder == "encoder":
        return "downsamples." + block.rpartition(".")[2]
    slot_match = _DECODER_SLOT.match(block)
    if slot_match and coder == "decoder":
        group, resnet = slot_match.groups()
        slot = int(resnet) if resnet is not None else num_res_blocks + 1
        if resnet is not None and slot > num_res_blocks:
            return None
        return f"upsamples.{int(group) * (num_res_blocks + 2) + slot}"
    return None


def vae_original_to_diffusers(name: str, num_res_blocks: int = 2) -> str | None:
    """Map an original Wan2.1 VAE parameter name to its ``AutoencoderKLWan`` name.

    >>> vae_original_to_diffusers("decoder.upsamples.4.shortcut.weight")
    'decoder.up_blocks.1.resnets.0.conv_shortcut.weight'
    """
    return _map_name(name, num_res_blocks, reverse=False)


def vae_diffusers_to_original(name: str, num_res_blocks: int = 2) -> str | None:
    """Map an ``AutoencoderKLWan`` parameter name to the original Wan2.1 VAE name."""
    return _map_name(name, num_res_blocks, reverse=True)


def _map_name(name: str, num_res_blocks: int, reverse: bool) -> str | None:
    """One name in either direction: top-level names, or ``{coder}.{block}.{below}`` with the block
    and the part below it mapped (``reverse``: diffusers to original)."""
    match = (_DIFFUSERS_NAME if reverse else _ORIGINAL_NAME).match(name)
    if match is None:
        return _top_level(name, reverse=reverse)
    coder, block, below = match.groups()
    map_block = _diffusers_block_to_original if reverse else _original_block_to_diffusers
    mapped_block = map_block(coder, block, num_res_blocks)
    mapped_below = _below_block(below, reverse=reverse)
    if mapped_block is None or mapped_below is None:
        return None
    return f"{coder}.{mapped_block}.{mapped_below}"


def vae_state_dict_to_diffusers(state_dict: Mapping[str, T], num_res_blocks: int = 2) -> dict[str, T]:
    """Rename a whole original Wan2.1 VAE state dict to ``AutoencoderKLWan`` names (values untouched)."""
    return _rename_all(state_dict, vae_original_to_diffusers, num_res_blocks, "original Wan2.1 VAE")


def vae_state_dict_to_original(state_dict: Mapping[str, T], num_res_blocks: int = 2) -> dict[str, T]:
    """Rename a whole ``AutoencoderKLWan`` state dict to the original Wan2.1 VAE names."""
    return _rename_all(state_dict, vae_diffusers_to_original, num_res_blocks, "AutoencoderKLWan")


def _rename_all(
    state_dict: Mapping[str, T], rename: Callable[[str, int], str | None], num_res_blocks: int, kind: str
) -> dict[str, T]:
    renamed = {name: rename(name, num_res_blocks) for name in state_dict}
    unknown = [name for name, new in renamed.items() if new is None]
    if unknown:
        raise ValueError(f"Not {kind} parameter names: {', '.join(unknown[:5])}" + (" ..." if len(unknown) > 5 else ""))
    return {new: state_dict[name] for name, new in renamed.items()}
