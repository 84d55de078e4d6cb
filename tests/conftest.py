"""Make tests/ importable (for the local Hub server used by several test modules)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
