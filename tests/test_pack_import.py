"""The pack imports as ComfyUI imports it (the repository folder as a package), without ComfyUI."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


# A fresh interpreter where the library is not installed: the editable install's finder (pip
# install -e .) is taken off sys.meta_path, as in a ComfyUI whose custom_nodes/ holds a clone.
NOT_INSTALLED = (
    "import importlib.util, sys\n"
    "sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, '__module__', type(f).__module__)"
    ".startswith('__editable__')]\n"
    "assert importlib.util.find_spec('fourdnex_core') is None\n"
)


def load_pack_like_comfyui(checks: str) -> str:
    """Run ``checks`` after loading the pack as ComfyUI does, in a fresh interpreter; return stdout.

    ComfyUI loads custom_nodes/<folder>/__init__.py as a package named after the folder.
    """
    script = (
        NOT_INSTALLED
        + "path_before = list(sys.path)\n"
        f"spec = importlib.util.spec_from_file_location('ComfyUI_4DNeX', {str(ROOT / '__init__.py')!r},"
        f" submodule_search_locations=[{str(ROOT)!r}])\n"
        "pack = importlib.util.module_from_spec(spec)\n"
        "sys.modules['ComfyUI_4DNeX'] = pack\n"
        "spec.loader.exec_module(pack)\n"
        + checks
    )
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd="/", env=environment)
    assert result.returncode == 0, result.stderr
    return result.stdout


def registered_nodes() -> list[str]:
    """The node names the pack registers when imported here (``nodes``), sorted."""
    import nodes

    return sorted(nodes.NODE_CLASS_MAPPINGS)


@pytest.mark.slow  # a fresh interpreter
def test_pack_imports_like_comfyui_loads_it_and_registers_every_node():
    stdout = load_pack_like_comfyui(
        "assert 'comfy' not in sys.modules and 'folder_paths' not in sys.modules\n"
        "print(pack.WEB_DIRECTORY, *sorted(pack.NODE_CLASS_MAPPINGS))\n"
    )
    web, *names = stdout.split()
    assert names == registered_nodes() and web == "./web"  # the count itself is pinned in test_nodes.py
    assert (ROOT / "web").is_dir()


@pytest.mark.slow  # a fresh interpreter
def test_loading_the_pack_leaves_sys_path_alone_and_exposes_only_the_library():
    # The folder is not put on sys.path (it would make the checkout's nodes/, scripts/, tests/ top-level
    # modules over ComfyUI's own `nodes`); the library is registered under its one name, from this folder,
    # and the nodes use that same module (no second copy under the pack's name).
    stdout = load_pack_like_comfyui(
        "assert sys.path == path_before, (path_before, sys.path)\n"
        "for name in ('nodes', 'scripts', 'tests', 'benchmarks', 'fourdnex_train'):\n"
        "    assert importlib.util.find_spec(name) is None, name\n"
        "library = sys.modules['fourdnex_core']\n"
        "assert not any(name.startswith('ComfyUI_4DNeX.fourdnex_core') for name in sys.modules)\n"
        "print(library.__file__)\n"
    )
    assert Path(stdout.strip()) == ROOT / "fourdnex_core" / "__init__.py"


@pytest.mark.slow  # a fresh interpreter
def test_entry_point_also_imports_as_a_plain_module():
    # pytest imports the root __init__.py as the module "__init__" (no package) when the checkout's
    # folder name is no Python identifier (ComfyUI-4DNeX); every test would error if that failed.
    script = (
        "import importlib.util, sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        f"spec = importlib.util.spec_from_file_location('__init__', {str(ROOT / '__init__.py')!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "print(*sorted(module.NODE_CLASS_MAPPINGS))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd="/")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == registered_nodes()


def test_no_module_of_the_library_imports_comfyui():
    for path in (ROOT / "fourdnex_core").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for forbidden in ("import comfy", "from comfy", "import folder_paths", "from folder_paths"):
            assert forbidden not in text, f"{path} imports ComfyUI ({forbidden})"
    assert importlib.util.find_spec("comfy") is None  # the tests themselves run without ComfyUI


# ComfyUI's own socket types (core nodes declare them); the pack's other types are its own.
COMFY_CORE_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "IMAGE", "MASK", "LATENT", "MODEL", "VAE", "CLIP",
                    "CLIP_VISION", "SIGMAS", "SAMPLER", "NOISE", "GUIDER"}
# Words only a node needs: ComfyUI's value types and node API, the pack's socket types, node names.
COMFY_WORDS = {"CONDITIONING", "CLIP_VISION_OUTPUT", "INPUT_TYPES", "RETURN_TYPES", "NODE_CLASS_MAPPINGS",
               "folder_paths", "custom_nodes", "filename_prefix", "UNIQUE_ID"}


def _declared_types(node: type) -> set[str]:
    inputs = [spec[0] for section in node.INPUT_TYPES().values() for spec in section.values()
              if isinstance(spec, tuple)]  # hidden inputs are plain strings ("UNIQUE_ID")
    return {t for t in [*node.RETURN_TYPES, *inputs] if isinstance(t, str)}


def test_comfyui_knowledge_lives_only_under_nodes():
    # The library and the trainer name no ComfyUI value type, node API, socket type of the pack or
    # node (class or display name): what a node needs of ComfyUI is in nodes/. UMT5 is a socket type
    # and also the text encoder's own name, which the library uses.
    import nodes

    pack_types = set().union(*(_declared_types(node) for node in nodes.NODE_CLASS_MAPPINGS.values()))
    words = COMFY_WORDS | (pack_types - COMFY_CORE_TYPES - {"UMT5"}) | set(nodes.NODE_CLASS_MAPPINGS)
    words |= {name.split(" (")[0] for name in nodes.NODE_DISPLAY_NAME_MAPPINGS.values()}
    assert {"POINTMAPS", "FOURDNEX_MODEL", "FourDNeXSampler", "4DNeX Post-Optimize"} <= words
    alternatives = "|".join(map(re.escape, sorted(words, key=len, reverse=True)))
    pattern = re.compile(rf"(?<![\w-])({alternatives})(?![\w-])")
    found = []
    for package in ("fourdnex_core", "fourdnex_train"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                found += [f"{path.relative_to(ROOT)}:{number}: {m.group(1)}" for m in pattern.finditer(line)]
    assert not found, "ComfyUI knowledge outside nodes/:\n" + "\n".join(found)
