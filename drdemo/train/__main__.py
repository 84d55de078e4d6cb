"""`python -m drdemo.train` (and `torchrun ... -m drdemo.train`)."""

import sys

from drdemo.train.cli import main

sys.exit(main())
