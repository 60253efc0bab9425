"""`python -m gpt`: see `gpt.cli`."""

import sys

from gpt.cli import main

sys.exit(main())
