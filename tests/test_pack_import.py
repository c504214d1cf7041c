"""The pack imports as ComfyUI imports it (the repository folder as a package), without ComfyUI."""

import importlib.util
import subprocess
import sys
from pathlib import Path

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
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd="/")
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_pack_imports_like_comfyui_loads_it_and_registers_every_node():
    stdout = load_pack_like_comfyui(
        "assert 'comfy' not in sys.modules and 'folder_paths' not in sys.modules\n"
        "print(len(pack.NODE_CLASS_MAPPINGS), pack.WEB_DIRECTORY)\n"
    )
    count, web = stdout.split()
    assert int(count) >= 15 and web == "./web"
    assert (ROOT / "web").is_dir()


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


def test_entry_point_also_imports_as_a_plain_module():
    # pytest imports the root __init__.py as the module "__init__" (no package) when the checkout's
    # folder name is no Python identifier (ComfyUI-4DNeX); every test would error if that failed.
    script = (
        "import importlib.util, sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        f"spec = importlib.util.spec_from_file_location('__init__', {str(ROOT / '__init__.py')!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "print(len(module.NODE_CLASS_MAPPINGS))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd="/")
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) >= 15


def test_no_module_of_the_library_imports_comfyui():
    for path in (ROOT / "fourdnex_core").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for forbidden in ("import comfy", "from comfy", "import folder_paths", "from folder_paths"):
            assert forbidden not in text, f"{path} imports ComfyUI ({forbidden})"
    assert importlib.util.find_spec("comfy") is None  # the tests themselves run without ComfyUI
