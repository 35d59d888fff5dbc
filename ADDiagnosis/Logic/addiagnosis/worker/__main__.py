"""``python -m addiagnosis.worker --parent PID [--idle SECONDS]``: the worker process (see server.py)."""

import sys

from addiagnosis.worker.server import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
