"""The command line (``addiagnosis ...``): one module per command group and one command table."""
