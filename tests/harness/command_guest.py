"""A guest program that runs one shell command (CARLEDGER_COMMAND) against the vcan interfaces.

Used by scripts/vcan-run. The command's exit status is the guest's.
"""

from __future__ import annotations

import os
import subprocess
import sys

if __name__ == "__main__":
    sys.exit(subprocess.run(["/bin/sh", "-c", os.environ["CARLEDGER_COMMAND"]]).returncode)
