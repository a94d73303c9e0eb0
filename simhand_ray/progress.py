"""The jobs' progress bars: tqdm on a terminal; nothing where stderr is a file or a pipe (``ray job submit``
logs, CI), whose readers get the stages' log lines instead of kilobytes of cursor-control redraws."""
from __future__ import annotations

import sys


def progress_bar(total: int, desc: str, unit: str, enabled: bool = True):
    """A tqdm bar over ``total`` units, shown only when ``enabled`` and stderr is a terminal."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, mininterval=2, disable=not (enabled and sys.stderr.isatty()))
