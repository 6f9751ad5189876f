"""``python -m diagnostics.cli``: the ``lanczos-optim`` command without the installed script."""

import sys

from diagnostics.cli.app import main

sys.exit(main())
