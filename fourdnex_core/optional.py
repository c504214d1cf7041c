"""Optional dependencies (the ``splats`` and ``rerun`` extras): a clear error, before any work, when one
is missing or of a version the export was not written for."""

from __future__ import annotations

import importlib.metadata
import importlib.util


def require(module: str, needed_for: str, pip_spec: str, extra: str,
            minor_version: tuple[str, tuple[int, int]] | None = None) -> None:
    """Raise :class:`ImportError` naming the install when ``module`` cannot be imported, or when
    ``minor_version`` = (distribution, (major, minor)) is given and the installed distribution is of
    another minor version (an API that changes between minor versions, like Rerun's).

    ``needed_for`` says what needs it ("Rerun export needs the Rerun SDK"); ``pip_spec`` is what pip
    installs (``rerun-sdk==0.41.0``), ``extra`` the package extra that pins it. A ComfyUI user installs
    into ComfyUI's own Python, which is why the message names the Python that runs the export.
    """
    install = (f"in the Python that runs the export: pip install {pip_spec} (in a checkout: pip install -e "
               f"'.[{extra}]'); or leave that export off.")
    if importlib.util.find_spec(module) is None:
        raise ModuleNotFoundError(f"{needed_for}, {install}")
    if minor_version is not None:
        distribution, wanted = minor_version
        found = importlib.metadata.version(distribution)
        if tuple(int(part) for part in found.split(".")[:2]) != wanted:
            raise ImportError(f"{needed_for} {wanted[0]}.{wanted[1]}.x (the version it is written and tested "
                              f"for), found {distribution} {found}; {install}")
