"""``python -m lossdsl.cli``: the same as the ``lossdsl`` command."""

import sys

from . import main

sys.exit(main())
