"""`python -m benchmarks`: every suite's command line (benchmarks/suites.py)."""

import sys

from benchmarks.suites import main

sys.exit(main())
