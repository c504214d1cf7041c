"""Optional dependencies (the ``splats`` and ``rerun`` extras): a clear error, before any work, when one
is missing."""

from __future__ import annotations

import importlib.util


def require(module: str, needed_for: str, pip_spec: str, extra: str) -> None:
    """Raise :class:`ModuleNotFoundError` naming the install when ``module`` cannot be imported.

    ``needed_for`` says what needs it ("Rerun export needs the Rerun SDK"); ``pip_spec`` is what pip
    installs (``rerun-sdk==0.41.0``), ``extra`` the package extra that pins it. A ComfyUI user installs
    into ComfyUI's own Python, which is why the message names the Python that runs the export.
    """
    if importlib.util.find_spec(module) is None:
        raise ModuleNotFoundError(f"{needed_for}, in the Python that runs the export: pip install {pip_spec} "
                                  f"(in a checkout: pip install -e '.[{extra}]'); or leave that export off.")
