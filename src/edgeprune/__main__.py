"""``python -m edgeprune``."""

import sys

from .cli import main

sys.exit(main())
