"""4DNeX Memory Options: block swap, fp8, attention kernel, compile, step cache and VAE tiling.

The node only builds a :class:`fourdnex_core.lowvram.LowVramOptions`; the model loader, the VAE
loader and the sampler apply it. Its inputs are generated from the options' declaration
(:func:`fourdnex_core.lowvram.options.options_of`): the fields the node shows, their defaults,
help texts (tooltips) and widget ranges. Component offload is ComfyUI's own model management here.
"""

from __future__ import annotations

import dataclasses

from fourdnex_core.lowvram import LowVramOptions
from fourdnex_core.lowvram.options import options_of

AUTO = -1  # the widget value of "auto" (blocks_to_swap)


def _widget(field: dataclasses.Field) -> tuple:
    """The ComfyUI input of one option: its type (a list of choices, BOOLEAN, INT or FLOAT) and settings."""
    meta = field.metadata
    settings = {"default": field.default, **meta["node"], "tooltip": meta["help"]}
    if meta["choices"] is not None:
        return list(meta["choices"]), settings
    kind = {bool: "BOOLEAN", int: "INT", float: "FLOAT"}[type(field.default)]
    return kind, settings


class FourDNeXMemoryOptions:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {field.name: _widget(field) for field in options_of("node")}}

    RETURN_TYPES = ("FOURDNEX_MEMORY",)
    RETURN_NAMES = ("memory",)
    FUNCTION = "make"
    CATEGORY = "4DNeX/loaders"
    DESCRIPTION = ("Memory and speed options for the 14B on small GPUs (see the README's Low VRAM table). Connect "
                   "to 4DNeX Model Loader (block swap, fp8, attention, compile, step cache) and 4DNeX VAE Loader "
                   "(tiling).")

    def make(self, **values):
        for field in options_of("node"):
            if field.metadata["auto"] and values.get(field.name) == AUTO:
                values[field.name] = "auto"
        return (LowVramOptions(**values),)


NODE_CLASS_MAPPINGS = {"FourDNeXMemoryOptions": FourDNeXMemoryOptions}
NODE_DISPLAY_NAME_MAPPINGS = {"FourDNeXMemoryOptions": "4DNeX Memory Options (low VRAM)"}
