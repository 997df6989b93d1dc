"""python -m carledger"""

import sys

from carledger.cli import main

sys.exit(main())
