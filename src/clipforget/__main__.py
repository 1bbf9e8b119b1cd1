"""``python -m clipforget``: the command line (:func:`clipforget.cli.main`)."""

import sys

from clipforget.cli import main

sys.exit(main())
