"""``python -m clipforget``: the command line."""

import sys

from clipforget.cli import main

sys.exit(main())
