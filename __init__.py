"""ComfyUI entry point of the ComfyUI-4DNeX node pack.

Importing this package must work without ComfyUI installed (CI has none).
"""

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("fourdnex_core") is None:  # in custom_nodes/, the library sits beside nodes/
    sys.path.insert(0, str(Path(__file__).resolve().parent))

if __package__:  # ComfyUI imports the pack as a package
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402
else:  # a plain module: pytest imports the root __init__.py so in a checkout whose folder name is no
    # Python identifier (ComfyUI-4DNeX), with this folder on sys.path
    from nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
