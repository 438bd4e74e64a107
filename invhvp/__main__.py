"""``python -m invhvp``: the same command line as the ``invhvp`` console script."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
