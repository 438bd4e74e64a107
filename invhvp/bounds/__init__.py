"""Pure functions for theoretical error bounds and plans (docs/theory.md §4–§5).

``bounds.datainf``: DataInf certificates; ``bounds.lissa``: LiSSA plans and bounds.
"""

from .datainf import *  # noqa: F401,F403
from .lissa import *  # noqa: F401,F403
