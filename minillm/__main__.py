"""`python -m minillm` is exactly the `minillm` command."""
import sys

from minillm.cli import main

sys.exit(main())
