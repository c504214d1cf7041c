"""``python -m fourdnex_core`` runs the ``fourdnex`` command line."""

import sys

from fourdnex_core.cli import main

sys.exit(main())
