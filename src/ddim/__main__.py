import sys

from ddim.cli import main

sys.exit(main())
