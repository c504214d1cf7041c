"""ComfyUI entry point of the ComfyUI-4DNeX node pack.

ComfyUI loads this file as a package named after the pack's folder and imports the nodes relatively.
The nodes use the library by its own name, ``fourdnex_core``: installed (``pip install -e .``) it is
found as usual; in ``custom_nodes/`` it is the folder beside ``nodes/``, which this package registers
under that one name. ``sys.path`` is left as it is: the folder on it would make this checkout's
``nodes``, ``scripts``, ``tests`` and ``benchmarks`` top-level modules for every other pack.

Importing this package must work without ComfyUI installed (CI has none).
"""

import importlib.util
import sys
from pathlib import Path

LIBRARY = "fourdnex_core"


def _expose_library() -> None:
    """Register this folder's ``fourdnex_core`` as the top-level ``fourdnex_core`` if none is importable.

    An importable copy is used as it is (an editable install of this checkout, or a library already
    imported in the process); only when there is none is the folder's copy loaded, with its submodules
    found through its ``__path__``, so it is one module under one name either way.
    """
    if LIBRARY in sys.modules or importlib.util.find_spec(LIBRARY) is not None:
        return
    folder = Path(__file__).resolve().parent / LIBRARY
    spec = importlib.util.spec_from_file_location(LIBRARY, folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    if spec is None or spec.loader is None:
        raise ImportError(f"The pack's library is missing: no {folder / '__init__.py'}. Install the pack again.")
    library = importlib.util.module_from_spec(spec)
    sys.modules[LIBRARY] = library
    try:
        spec.loader.exec_module(library)
    except BaseException:
        del sys.modules[LIBRARY]
        raise


_expose_library()

if __package__:  # ComfyUI imports the pack as a package
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402
else:  # a plain module: pytest imports the root __init__.py so in a checkout whose folder name is no
    # Python identifier (ComfyUI-4DNeX), with this folder on sys.path (pytest's pythonpath setting)
    from nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
