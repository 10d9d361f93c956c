"""`python -m edgeshrink` is the `edgeshrink` command."""

from edgeshrink.cli.main import main

main()
