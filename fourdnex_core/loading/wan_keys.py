"""Module-name mapping between the original Wan2.1 checkpoints and diffusers.

The original Wan2.1 release (and every ComfyUI ``diffusion_models/`` file) names the
transformer's modules ``blocks.0.self_attn.q``; diffusers' ``WanTransformer3DModel`` names the
same module ``blocks.0.attn1.to_q``. This module is the one place that knows the mapping. It
works on *module paths* (no ``.weight`` suffix) so the same table serves full checkpoints and
LoRA files, whose keys hang extra suffixes (``.lora_A.weight``, ``.alpha``) off a module path.

Note the swapped norms: the original ``norm3`` (cross-attention norm, affine) is diffusers'
``norm2``; the original ``norm2`` (feed-forward norm) has no parameters and is diffusers'
``norm3``.
"""

from __future__ import annotations

import re

# Prefixes that wrap the original names in files written by ComfyUI and other tools.
ORIGINAL_PREFIXES = ("model.diffusion_model.", "diffusion_model.")

# (original module path, diffusers module path) for modules outside the blocks.
_TOP_LEVEL = (
    ("patch_embedding", "patch_embedding"),
    ("vace_patch_embedding", "vace_patch_embedding"),  # Wan2.1 VACE
    ("text_embedding.0", "condition_embedder.text_embedder.linear_1"),
    ("text_embedding.2", "condition_embedder.text_embedder.linear_2"),
    ("time_embedding.0", "condition_embedder.time_embedder.linear_1"),
    ("time_embedding.2", "condition_embedder.time_embedder.linear_2"),
    ("time_projection.1", "condition_embedder.time_proj"),
    ("img_emb.proj.0", "condition_embedder.image_embedder.norm1"),
    ("img_emb.proj.1", "condition_embedder.image_embedder.ff.net.0.proj"),
    ("img_emb.proj.3", "condition_embedder.image_embedder.ff.net.2"),
    ("img_emb.proj.4", "condition_embedder.image_embedder.norm2"),
    ("img_emb.emb_pos", "condition_embedder.image_embedder.pos_embed"),
    ("head.head", "proj_out"),
    ("head.modulation", "scale_shift_table"),
)

# (original, diffusers) paths inside ``blocks.{i}``.
_IN_BLOCK = (
    ("self_attn.q", "attn1.to_q"),
    ("self_attn.k", "attn1.to_k"),
    ("self_attn.v", "attn1.to_v"),
    ("self_attn.o", "attn1.to_out.0"),
    ("self_attn.norm_q", "attn1.norm_q"),
    ("self_attn.norm_k", "attn1.norm_k"),
    ("cross_attn.q", "attn2.to_q"),
    ("cross_attn.k", "attn2.to_k"),
    ("cross_attn.v", "attn2.to_v"),
    ("cross_attn.o", "attn2.to_out.0"),
    ("cross_attn.norm_q", "attn2.norm_q"),
    ("cross_attn.norm_k", "attn2.norm_k"),
    ("cross_attn.k_img", "attn2.add_k_proj"),
    ("cross_attn.v_img", "attn2.add_v_proj"),
    ("cross_attn.norm_k_img", "attn2.norm_added_k"),
    ("norm3", "norm2"),
    ("ffn.0", "ffn.net.0.proj"),
    ("ffn.2", "ffn.net.2"),
    ("modulation", "scale_shift_table"),
)

# Wan2.1 VACE's ``vace_blocks.{i}``: a block's modules plus the projections into and out of it.
_IN_VACE_BLOCK = _IN_BLOCK + (("before_proj", "proj_in"), ("after_proj", "proj_out"))

_ORIGINAL_TO_DIFFUSERS_TOP = dict(_TOP_LEVEL)
_DIFFUSERS_TO_ORIGINAL_TOP = {d: o for o, d in _TOP_LEVEL}
_ORIGINAL_TO_DIFFUSERS_BLOCK = dict(_IN_BLOCK)
_DIFFUSERS_TO_ORIGINAL_BLOCK = {d: o for o, d in _IN_BLOCK}
# {block list name: {path inside a block: mapped path}}, each way
_ORIGINAL_TO_DIFFUSERS_BLOCKS = {"blocks": _ORIGINAL_TO_DIFFUSERS_BLOCK, "vace_blocks": dict(_IN_VACE_BLOCK)}
_DIFFUSERS_TO_ORIGINAL_BLOCKS = {"blocks": _DIFFUSERS_TO_ORIGINAL_BLOCK,
                                 "vace_blocks": {d: o for o, d in _IN_VACE_BLOCK}}
_BLOCK_PATH = re.compile(r"^(blocks|vace_blocks)\.(\d+)\.(.+)$")


def strip_original_prefix(name: str) -> str:
    """Remove a ``model.diffusion_model.`` or ``diffusion_model.`` prefix, if present."""
    for prefix in ORIGINAL_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def _map_path(path: str, top: dict[str, str], in_block: dict[str, dict[str, str]]) -> str | None:
    match = _BLOCK_PATH.match(path)
    if match:
        blocks, index, rest = match.groups()
        mapped = in_block[blocks].get(rest)
        return None if mapped is None else f"{blocks}.{index}.{mapped}"
    return top.get(path)


def _split_param(name: str, module_paths: dict[str, str],
                 in_block: dict[str, dict[str, str]]) -> tuple[str, str] | None:
    """Split ``a.b.c.weight`` into the longest known module path and the rest (``weight``)."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        path = ".".join(parts[:cut])
        if _map_path(path, module_paths, in_block) is not None:
            return path, ".".join(parts[cut:])
    return None


def original_to_diffusers(name: str) -> str | None:
    """Map an original Wan key (module path or parameter name) to its diffusers name.

    A ``model.diffusion_model.`` / ``diffusion_model.`` prefix is stripped first. Returns ``None``
    for names that belong to no known module, so callers can report them.

    >>> original_to_diffusers("model.diffusion_model.blocks.3.self_attn.q.weight")
    'blocks.3.attn1.to_q.weight'
    """
    return _rename(strip_original_prefix(name), _ORIGINAL_TO_DIFFUSERS_TOP, _ORIGINAL_TO_DIFFUSERS_BLOCKS)


def diffusers_to_original(name: str) -> str | None:
    """Map a diffusers ``WanTransformer3DModel`` (or ``WanVACETransformer3DModel``) key to the original Wan
    name (no prefix)."""
    return _rename(name, _DIFFUSERS_TO_ORIGINAL_TOP, _DIFFUSERS_TO_ORIGINAL_BLOCKS)


def _rename(name: str, top: dict[str, str], in_block: dict[str, dict[str, str]]) -> str | None:
    split = _split_param(name, top, in_block)
    if split is None:
        return None
    path, rest = split
    mapped = _map_path(path, top, in_block)
    return f"{mapped}.{rest}" if rest else mapped
