"""`python -m vprkit.cli ...`: the same as `vprkit ...`."""

import sys

from . import main

sys.exit(main())
