"""`python -m largebatch ...`: the form to use in `ray job submit` entrypoints (imports the uploaded working dir)."""
import sys

from largebatch.cli import main

sys.exit(main())
