import sys

from raydd.cli import main

sys.exit(main())
