"""``python -m kernel_loader.cli``: the same as the ``kernel-loader`` console script."""

import sys

from . import main

sys.exit(main())
