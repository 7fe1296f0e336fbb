import sys

from sf_mamba.cli import main

sys.exit(main())
