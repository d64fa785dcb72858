"""`python -m retentiond`."""

import sys

from retentiond.cli import main

sys.exit(main())
