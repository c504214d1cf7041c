"""The 4DNeX transformer: diffusers' Wan2.1 transformer with two small changes.

4DNeX feeds the Wan2.1 image-to-video DiT one *wide* video: RGB on the left half of every
frame, the XYZ point map on the right half (see :mod:`fourdnex_core.representation`). Two
changes make the two halves one pixel-aligned pair instead of one wide picture:

1. **Shared rotary positions.** The XYZ token at (frame, row, column) gets exactly the RoPE of
   the RGB token at (frame, row, column), not of column + W/2.
2. **Domain embeddings.** Two learnable vectors of the model width (``domain_embeddings``,
   shape [2, inner_dim]) are added after patch embedding: row 0 to every RGB token, row 1 to
   every XYZ token. They are zeros until the 4DNeX weights are loaded.

Everything else is diffusers' ``WanTransformer3DModel``, unchanged: with
``shared_rope=False`` and zero domain embeddings the output equals stock diffusers exactly.

The two changes are written once, as the pure functions :func:`share_positions` and
:func:`add_domain_embeddings`; this module's diffusers subclass and the patch of ComfyUI's native
Wan model (``nodes/native_model.py``) both call them.
"""

from __future__ import annotations

import inspect

import torch
from diffusers import WanTransformer3DModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed
from torch import nn

NUM_DOMAINS = 2  # 0: RGB half, 1: XYZ half


def share_positions(table: torch.Tensor, frames: int, rows: int, half_cols: int) -> torch.Tensor:
    """Per-token positions of one half -> of the width-fused video, both halves sharing them.

    Args:
        table: [B, F * H * W', *rest], one entry per token of ONE half in (frame, row, column)
            order (a rotary table: diffusers' [1, L, 1, head_dim], ComfyUI's [1, L, 1, d/2, 2, 2]).
        frames, rows, half_cols: the token grid F x H x W' of that half.
    Returns:
        [B, F * H * 2W', *rest] in the token order of the wide video: each row holds its W'
        entries twice, so the XYZ token at (f, h, w) gets the entry of the RGB token at (f, h, w).
    """
    tokens = frames * rows * half_cols
    if table.shape[1] != tokens:
        raise ValueError(f"The position table has {table.shape[1]} tokens, the grid {frames} x {rows} x {half_cols} "
                         f"has {tokens}.")
    grid = table.reshape(table.shape[0], frames, rows, half_cols, *table.shape[2:])
    return torch.cat([grid, grid], dim=3).reshape(table.shape[0], 2 * tokens, *table.shape[2:])


def add_domain_embeddings(patches: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
    """Add the RGB embedding to the left half of the patch columns and the XYZ one to the right.

    Args:
        patches: [B, D, F, H, 2W'] output of the patch embedding (before flattening to tokens).
        embeddings: [2, D]; row 0 RGB, row 1 XYZ.
    Returns:
        [B, D, F, H, 2W'] in ``patches``' dtype.
    """
    columns = patches.shape[-1]
    if columns % 2:
        raise ValueError(f"A width-fused latent has an even number of patch columns, got {columns}.")
    if embeddings.shape != (NUM_DOMAINS, patches.shape[1]):
        raise ValueError(f"Domain embeddings {tuple(embeddings.shape)} do not fit a model of width {patches.shape[1]}; "
                         f"they must be [{NUM_DOMAINS}, {patches.shape[1]}].")
    per_column = embeddings.to(patches).T.repeat_interleave(columns // 2, dim=1)  # [D, 2W']
    return patches + per_column[None, :, None, None, :]


class SharedRotaryPosEmbed(WanRotaryPosEmbed):
    """Wan's 3D RoPE for a width-fused video: both halves share the positions of one half.

    Input ``hidden_states``: [B, C, F, H, 2W] (latent, before patchify). Returns
    ``(freqs_cos, freqs_sin)``, each [1, F' * H' * 2W', 1, head_dim] in the token order of the
    patchified wide latent (frame, row, column), where the column index wraps at W'.
    """

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        width = hidden_states.shape[-1]
        patch_width = self.patch_size[2]
        if width % (2 * patch_width) != 0:
            raise ValueError(
                f"A width-fused latent needs a width divisible by {2 * patch_width} (two halves of whole "
                f"patches), got {width}. Use image widths that are multiples of 16."
            )
        half = hidden_states[..., : width // 2]
        frames, rows, half_cols = (
            half.shape[2] // self.patch_size[0],
            half.shape[3] // self.patch_size[1],
            half.shape[4] // patch_width,
        )
        return tuple(share_positions(freqs, frames, rows, half_cols) for freqs in super().forward(half))


def _with_base_signature(init):
    """Give ``init(self, shared_rope, **wan_config)`` the full parameter list of Wan's __init__.

    diffusers' ``register_to_config`` and ``from_config`` read the config keys from the
    signature, so the subclass lists every base parameter without copying them by hand; a new
    diffusers parameter is picked up automatically.
    """
    own = [p for p in inspect.signature(init).parameters.values() if p.kind is not p.VAR_KEYWORD]
    base = list(inspect.signature(WanTransformer3DModel.__init__).parameters.values())[1:]
    parameters = own + [p.replace(kind=p.KEYWORD_ONLY) for p in base]
    init.__signature__ = inspect.Signature(parameters)
    return init


class FourDNeXTransformer3DModel(WanTransformer3DModel):
    """Wan2.1 transformer with shared RoPE for the two halves and learnable domain embeddings.

    Args:
        shared_rope: give the XYZ half the rotary positions of the RGB half (4DNeX). ``False``
            restores stock Wan positions over the whole wide frame.
        **wan_config: every ``WanTransformer3DModel`` argument (``num_layers``, ...).

    Forward inputs are those of ``WanTransformer3DModel``; ``hidden_states`` is the wide latent
    [B, 36, F, H, 2W] (noise 16 + mask 4 + condition 16 channels) and the output is the wide
    velocity [B, 16, F, H, 2W].
    """

    _keep_in_fp32_modules = [*WanTransformer3DModel._keep_in_fp32_modules, "domain_embeddings"]

    @register_to_config
    @_with_base_signature
    def __init__(self, shared_rope: bool = True, **wan_config):
        super().__init__(**wan_config)
        inner_dim = self.config.num_attention_heads * self.config.attention_head_dim
        if shared_rope:
            stock = self.rope
            self.rope = SharedRotaryPosEmbed(stock.attention_head_dim, stock.patch_size, stock.max_seq_len)
        self.domain_embeddings = nn.Parameter(torch.zeros(NUM_DOMAINS, inner_dim))
        self.patch_embedding.register_forward_hook(self._add_domain_embeddings)

    def _add_domain_embeddings(self, module: nn.Module, inputs: tuple, patches: torch.Tensor) -> torch.Tensor:
        """Forward hook on ``patch_embedding``: patches [B, D, F, H, 2W] -> :func:`add_domain_embeddings`."""
        return add_domain_embeddings(patches, self.domain_embeddings)

    @property
    def inner_dim(self) -> int:
        return self.config.num_attention_heads * self.config.attention_head_dim
