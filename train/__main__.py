"""``python -m train``: the ``fourdnex-train`` command line."""

import sys

from train.cli import main

sys.exit(main())
