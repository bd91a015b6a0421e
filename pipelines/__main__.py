"""``python -m pipelines``: the same as ``prefrestore-pipeline``."""

import sys

from pipelines.cli import main

sys.exit(main())
