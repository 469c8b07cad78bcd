"""asyncssh, imported once for the SSH package (the glue and the key handling).

asyncssh imports DSA support that ``cryptography`` deprecates, with a warning on every
start; the appliance makes and accepts no DSA key, so that warning is silenced here, at the
one import, and nowhere else.
"""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*DSA.*")
    import asyncssh

__all__ = ["asyncssh"]
