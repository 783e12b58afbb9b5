"""``modules_forge/main_thread.py`` (subset): the UI runs jobs through ``run_and_wait_result``, which
catches ``Exception``, prints it, stores it in ``last_exception`` and returns None. The stand-in runs the
function inline (no worker thread)."""

import traceback

last_exception = None


def run_and_wait_result(func, *args, **kwargs):
    global last_exception
    try:
        return func(*args, **kwargs)
    except Exception as e:
        traceback.print_exc()
        last_exception = e
        return None
