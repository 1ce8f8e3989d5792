# PYTHON_ARGCOMPLETE_OK  (argcomplete's global completion of python -m asyncopt)
"""``python -m asyncopt``: the command line (:mod:`asyncopt.cli`)."""

import sys

from asyncopt.cli import main

sys.exit(main())
