"""``python -m chaos``: the same command as the ``chaos`` entry point, from this interpreter's
environment, whatever else is on PATH."""

import sys

from chaos.cli import main

sys.exit(main())
