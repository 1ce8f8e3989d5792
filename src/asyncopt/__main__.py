"""``python -m asyncopt``: the command line (:mod:`asyncopt.cli`)."""

import sys

from asyncopt.cli import main

sys.exit(main())
