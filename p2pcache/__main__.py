"""`python -m p2pcache` is the `p2pcache` command."""

import sys

from .cli import main

sys.exit(main())
