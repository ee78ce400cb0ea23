"""``python -m p2pdma``: the same as the ``p2pdma`` command."""

import sys

from p2pdma.cli import main

sys.exit(main())
