"""THE owner of a log line's time: how each line of the replicas' and the cluster's logs starts (``stamped``), and
how a reader leaves it off (``unstamped``, what ``get_logs(timestamps=False)`` gives)."""
from __future__ import annotations

import re
import time

TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"
LINE_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d ", re.M)     # what TIME_FORMAT and a space write


def stamped(text) -> str:
    """``text`` as a log line: the time of day first."""
    return f"{time.strftime(TIME_FORMAT)} {text}"


def unstamped(text) -> str:
    """``text`` (one or more log lines) with each line's time left off."""
    return LINE_TIME.sub("", text)
