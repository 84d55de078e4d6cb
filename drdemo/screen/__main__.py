"""`python -m drdemo.screen` and `torchrun ... -m drdemo.screen`."""

import sys

from drdemo.screen.cli import main

sys.exit(main())
