"""`python -m tfsb <command> ...`: the same as the `tfsb` console script."""
import sys

from tfsb.cli import main

if __name__ == "__main__":
    sys.exit(main())
