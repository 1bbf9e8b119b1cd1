"""``python -m clipforget``: the command line (:func:`clipforget.app.cli.main`)."""

import sys

from clipforget.app.cli import main

sys.exit(main())
