"""Console/file logging, the per-iteration loss record, and TensorBoard."""
from __future__ import annotations

import datetime
import json
import logging
import os
import sys
import time

LOGGER_NAME = 'desra'


class _EarlyRecords(logging.Handler):
    """Keeps the records logged before the log file exists, so the file starts with them."""

    def __init__(self, capacity: int = 2000):
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.capacity = capacity

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.records) < self.capacity:
            self.records.append(record)


def get_root_logger(log_file: str | None = None, rank: int = 0, level=logging.INFO) -> logging.Logger:
    """The ``desra`` logger: console on rank 0 (WARNING elsewhere), plus ``log_file`` on rank 0.

    Messages logged before the first ``log_file`` is attached are written at its start. A file that is not
    valid UTF-8 in a name is logged with ``\\xNN`` escapes instead of failing.
    """
    logger = logging.getLogger(LOGGER_NAME)
    if not getattr(logger, '_desra_configured', False):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter('%(asctime)s %(levelname)s: %(message)s', '%Y-%m-%d %H:%M:%S'))
        logger.addHandler(handler)
        logger._desra_early = _EarlyRecords()
        logger.addHandler(logger._desra_early)
        logger.propagate = False
        logger._desra_configured = True
    logger.setLevel(level if rank == 0 else logging.WARNING)
    if log_file and rank == 0 and not any(getattr(h, 'baseFilename', None) == os.path.abspath(log_file)
                                          for h in logger.handlers):
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        fh = logging.FileHandler(log_file, 'a', encoding='utf-8', errors='backslashreplace')
        fh.setFormatter(logging.Formatter('%(asctime)s %(levelname)s: %(message)s'))
        early = getattr(logger, '_desra_early', None)
        if early is not None:
            for record in early.records:
                fh.handle(record)
            logger.removeHandler(early)
            logger._desra_early = None
        logger.addHandler(fh)
    return logger


def detach_log_file(log_file: str | None) -> None:
    """Close and remove the handler of ``log_file`` (a later run in the same process logs to its own file)."""
    if not log_file:
        return
    logger = logging.getLogger(LOGGER_NAME)
    for h in list(logger.handlers):
        if isinstance(h, logging.FileHandler) and h.baseFilename == os.path.abspath(log_file):
            logger.removeHandler(h)
            h.close()


class LossRecord:
    """Append-only ``losses.jsonl``: one JSON line per logged iteration, floats at full precision.

    Resumed runs append to the same file, so an interrupted-and-resumed run can be compared line by line
    with an uninterrupted one.
    """

    def __init__(self, path: str):
        self.path = path
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.repair()

    def repair(self) -> int:
        """Cut a partial last line (a write killed mid-line) so appended lines stay valid JSON; returns bytes cut."""
        try:
            with open(self.path, 'rb+') as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                if size == 0:
                    return 0
                f.seek(max(size - 1, 0))
                if f.read(1) == b'\n':
                    return 0
                f.seek(0)
                data = f.read()
                keep = data.rfind(b'\n') + 1
                f.truncate(keep)
                return size - keep
        except FileNotFoundError:
            return 0

    def write(self, current_iter: int, values: dict) -> None:
        from desra.atomic import output_error

        line = json.dumps({'iter': current_iter, **values})
        try:
            with open(self.path, 'a', encoding='utf-8') as f:
                f.write(line + '\n')
                f.flush()
        except OSError as e:
            raise output_error(self.path, e, len(line) + 1) from None


class MessageLogger:
    """BasicSR-style training line: epoch, iteration, learning rate, ETA, timings, losses."""

    def __init__(self, opt: dict, start_iter: int, tb_logger=None):
        self.exp_name = opt['name']
        self.total_iter = opt['train']['total_iter']
        self.start_iter = start_iter
        self.tb_logger = tb_logger
        self.start_time = time.time()
        self.logger = logging.getLogger(LOGGER_NAME)

    def __call__(self, log_vars: dict) -> None:
        epoch, current_iter = log_vars.pop('epoch'), log_vars.pop('iter')
        lrs = log_vars.pop('lrs')
        msg = f"[{self.exp_name[:8]}..][epoch:{epoch:3d}, iter:{current_iter:8,d}, lr:("
        msg += ', '.join(f'{v:.3e}' for v in lrs) + ')] '
        iter_time, data_time = log_vars.pop('time', None), log_vars.pop('data_time', None)
        if iter_time is not None:
            done = max(current_iter - self.start_iter, 1)
            eta_s = (time.time() - self.start_time) / done * (self.total_iter - current_iter)
            msg += f"[eta: {datetime.timedelta(seconds=int(eta_s))}, time (data): {iter_time:.3f} ({data_time:.3f})] "
        for k, v in log_vars.items():
            msg += f'{k}: {v:.4e} '
            if self.tb_logger is not None:
                self.tb_logger.add_scalar(f'losses/{k}' if k.startswith('l_') else k, v, current_iter)
        if self.tb_logger is not None:
            for i, lr in enumerate(lrs):
                self.tb_logger.add_scalar(f'lr/group{i}', lr, current_iter)
        self.logger.info(msg)


def init_tb_logger(log_dir: str):
    """A TensorBoard ``SummaryWriter`` (requires the ``tensorboard`` package)."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=log_dir)
