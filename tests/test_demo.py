"""``fourdnex demo``: every stage a user has, on tiny random weights and on a synthetic scene with
known geometry, each output read back with its reader; and commands that print only what a user
should read."""

from __future__ import annotations

import subprocess
import sys


def test_help_prints_no_library_warning():
    """transformers warns on import when torchvision is missing and the torchvision-backed CLIP
    processor is named; the project names the PIL one, so nothing but the help is printed."""
    result = subprocess.run([sys.executable, "-m", "fourdnex_core", "--help"], capture_output=True, text=True,
                            check=True)
    assert result.stderr == "" and result.stdout.startswith("usage: fourdnex")
