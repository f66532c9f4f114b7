"""``python -m lossdsl``: the same as the ``lossdsl`` command."""

import sys

from .cli import main

sys.exit(main())
