"""`python -m runner.testing`: a fake provider on a port, until SIGINT/SIGTERM."""

from runner.testing import main

main()
