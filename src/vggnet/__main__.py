"""`python -m vggnet ...` is the `vgg` command."""

import sys

from vggnet.cli import main

sys.exit(main())
