"""`python -m app.cli`: the same as the `mboxii-dlr` script."""

import sys

from app.cli import main

sys.exit(main())
