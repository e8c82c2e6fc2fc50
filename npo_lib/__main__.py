import sys

from npo_lib.cli import main

sys.exit(main())
