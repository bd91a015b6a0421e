"""``python -m prefrestore``: the same command line as ``prefrestore``."""

import sys

from prefrestore.cli.main import main

sys.exit(main())
