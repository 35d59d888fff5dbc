import sys

from addiagnosis.cli.main import main

sys.exit(main())
