"""``python -m promptmoe ...``: the same command line as ``promptmoe ...``."""
from .cli import main

raise SystemExit(main())
