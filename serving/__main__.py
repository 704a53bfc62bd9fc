"""`python -m serving` runs the command line."""

from serving.cli import main

raise SystemExit(main())
