"""``python -m fourdnex_train``: the ``fourdnex-train`` command line."""

import sys

from fourdnex_train.cli import main

sys.exit(main())
