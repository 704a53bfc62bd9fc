"""Keep a long run going past findings already reported but not fixed yet.

`FUZZ_KNOWN=IndexError,RecursionError` makes those exception types count, once each and with
their first traceback, instead of stopping the run; everything else still stops it.
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable

KNOWN = frozenset(filter(None, os.environ.get("FUZZ_KNOWN", "").split(",")))
seen: dict[str, int] = {}


def tolerate_known(test: Callable[[bytes], None]) -> Callable[[bytes], None]:
    @functools.wraps(test)
    def run(data: bytes) -> None:
        try:
            test(data)
        except Exception as e:
            name = type(e).__name__
            if name not in KNOWN:
                raise
            seen[name] = seen.get(name, 0) + 1
            if seen[name] == 1:
                print(f"known finding {name} (first input {data[:60]!r}):", file=sys.stderr)
                traceback.print_exc()
    return run
