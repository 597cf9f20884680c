"""`python -m clients ...`: the command-line interface (see `clients.cli`)."""

import sys

from .cli import main

sys.exit(main(prog="python -m clients"))
