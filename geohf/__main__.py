"""``python -m geohf ...``: the ``geohf`` command."""

import sys

from .cli import main

sys.exit(main())
