"""``python -m tracelet run|runs|replay ...``: the same as the ``tracelet`` command."""

import sys

from tracelet.cli import main

sys.exit(main())
