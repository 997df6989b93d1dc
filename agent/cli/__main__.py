"""python -m carledger.cli"""

import sys

from carledger.cli import main

sys.exit(main())
