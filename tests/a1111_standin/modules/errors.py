"""Stand-in for ``modules/errors.py``: ``report``/``display`` print the traceback (never raise).

``reported`` (stand-in only) keeps (message, exception) pairs so tests can assert on swallowed errors.
"""

import sys
import traceback

reported = []


def report(message: str, *, exc_info: bool = False) -> None:
    exc = sys.exc_info()[1] if exc_info else None
    reported.append((message, exc))
    print("*** " + message, file=sys.stderr)
    if exc_info:
        traceback.print_exc(file=sys.stderr)
        print("---", file=sys.stderr)


def display(e: Exception, task, *, full_traceback=False):
    reported.append((f"{task or 'error'}: {type(e).__name__}", e))
    print(f"{task or 'error'}: {type(e).__name__}", file=sys.stderr)
    traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)


def print_error_explanation(message):
    print(message, file=sys.stderr)
