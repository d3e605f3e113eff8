"""``python -m covnb``: the same as the ``covnb`` command."""

import sys

from covnb.cli import main

sys.exit(main())
