"""`python -m drdemo.evaluate`."""

import sys

from drdemo.evaluate.cli import main

sys.exit(main())
