"""ComfyUI nodes of the 4DNeX pack (thin adapters over ``fourdnex_core``).

Every module declares its nodes in ComfyUI's classic ``INPUT_TYPES`` API; ComfyUI itself is only
imported lazily (see :mod:`.comfy_bridge`), so the classes can be imported and run without it.
Use relative imports only: inside ComfyUI, the top-level name ``nodes`` is ComfyUI's own module.
"""

from . import encode, geometry, loaders, memory, native, sampling, synthetic

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}
for _module in (loaders, memory, encode, sampling, native, geometry, synthetic):
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
