"""Progress for every long loop: a tqdm bar on a terminal, timed log lines everywhere else.

A bar alone is invisible in a log file, under ``nohup`` or in a batch job, where "slow" and "hung" then look
the same. :class:`Progress` therefore draws a tqdm bar (rate and ETA) when standard error is a terminal, and
otherwise logs a line ``detect: 5/16 img (0.84 img/s, elapsed 0:00:06, ETA 0:00:13)`` after the first item,
every ``interval`` seconds and at the end. ``DESRA_PROGRESS=bar|log|off`` forces a mode;
``DESRA_PROGRESS_INTERVAL`` sets the seconds between log lines (default 30).
"""
from __future__ import annotations

import datetime
import logging
import os
import sys
import time

__all__ = ['Progress', 'progress_mode']


def progress_mode() -> str:
    mode = os.environ.get('DESRA_PROGRESS', '').strip().lower()
    if mode in ('bar', 'log', 'off'):
        return mode
    try:
        return 'bar' if sys.stderr.isatty() else 'log'
    except (AttributeError, ValueError):
        return 'log'


def _hms(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(seconds, 0))))


class Progress:
    """``with Progress(total, 'detect', unit='img') as p: ... p.update()``.

    Args:
        total: number of items (None: unknown).
        desc: what is being done (first word of every line).
        unit: item name.
        enabled: False on processes that should stay quiet (ranks other than 0).
        interval: seconds between log lines in log mode.
        logger: where log lines go (the ``desra`` logger by default).
    """

    def __init__(self, total: int | None, desc: str, unit: str = 'it', enabled: bool = True,
                 interval: float | None = None, logger: logging.Logger | None = None, initial: int = 0):
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self.initial = initial
        self.mode = progress_mode() if enabled else 'off'
        self.interval = float(os.environ.get('DESRA_PROGRESS_INTERVAL', 30)) if interval is None else interval
        self.logger = logger or logging.getLogger('desra')
        self.start = self._last_log = time.time()
        self._bar = None
        self._closed = False
        if self.mode == 'bar':
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, leave=False)

    def line(self) -> str:
        elapsed = time.time() - self.start
        done = self.n - self.initial
        rate = done / elapsed if elapsed > 0 else 0.0
        total = f'/{self.total}' if self.total is not None else ''
        rate_s = f'{rate:.2f} {self.unit}/s' if rate >= 1 or rate == 0 else f'{1 / rate:.1f} s/{self.unit}'
        eta = ''
        if self.total is not None and rate > 0 and self.n < self.total:
            eta = f', ETA {_hms((self.total - self.n) / rate)}'
        return f'{self.desc}: {self.n}{total} {self.unit} ({rate_s}, elapsed {_hms(elapsed)}{eta})'

    def update(self, n: int = 1) -> None:
        first = self.n == self.initial
        self.n += n
        if self.mode == 'bar':
            self._bar.update(n)
        elif self.mode == 'log':
            now = time.time()
            if first or now - self._last_log >= self.interval or (self.total is not None and self.n >= self.total):
                self._last_log = now
                self.logger.info(self.line())

    def write(self, msg: str) -> None:
        """A message that does not garble the bar."""
        if self._bar is not None:
            self._bar.write(msg)
        else:
            self.logger.info(msg)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.mode == 'log' and self.n > self.initial and self.total is not None and self.n < self.total:
            self.logger.info(self.line())

    def __enter__(self) -> 'Progress':
        return self

    def __exit__(self, *exc) -> None:
        self.close()
