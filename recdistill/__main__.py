"""``python -m recdistill ...`` is the ``recdistill`` command."""

import sys

from recdistill.cli import main

sys.exit(main())
