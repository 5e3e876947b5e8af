"""``python -m jobs.bench``: see jobs/bench/__init__.py."""

import sys

from recdistill.jobs.bench import main

sys.exit(main())
