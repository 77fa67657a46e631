"""One writer per folder: an advisory lock file ``<folder>/.lock`` held for the whole run.

The lock is an ``fcntl.flock`` on the file, so the operating system releases it when the holder exits for any
reason (SIGKILL included): a lock left by a dead process never blocks the next run. The file holds the
holder's pid, host, start time and command line, which a refused run prints. Where ``flock`` is not
supported (some network file systems) the lock falls back to the recorded pid: it counts as held while a
process with that pid exists on the same host.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time

from desra.errors import FolderInUseError, OutputError

try:
    import fcntl
except ImportError:  # Windows: pid fallback only
    fcntl = None

LOCK_NAME = '.lock'


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def read_lock_info(path: str) -> dict:
    try:
        with open(path, encoding='utf-8') as f:
            info = json.load(f)
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def _describe(info: dict) -> str:
    if not info:
        return 'another process'
    parts = [f"pid {info.get('pid', '?')}"]
    if info.get('host'):
        parts.append(f"on {info['host']}")
    if info.get('started'):
        parts.append(f"since {info['started']}")
    what = ' '.join(parts)
    if info.get('command'):
        what += f": {info['command']}"
    return what


class FolderLock:
    """``with FolderLock(folder, what='experiment'):`` refuses with :class:`FolderInUseError` if held.

    Args:
        folder: the folder to lock; created if missing.
        what: the kind of folder, for the message (``experiment folder``, ``detection output root``, ...).
    """

    def __init__(self, folder: str, what: str = 'folder'):
        self.folder = os.path.abspath(folder)
        self.path = os.path.join(self.folder, LOCK_NAME)
        self.what = what
        self._fd: int | None = None

    def _refuse(self, info: dict) -> FolderInUseError:
        return FolderInUseError(
            f"{self.what} {self.folder} is in use by {_describe(info)}. Wait for that run to finish or stop it; "
            f"if no such process is running any more (e.g. it ran on another machine sharing this disk), delete "
            f"{self.path} and start again")

    def check(self) -> None:
        """Refuse now if another live run holds the lock; creates nothing (the lock is taken by :meth:`acquire`)."""
        if not os.path.isfile(self.path) or self._fd is not None:
            return
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return
        try:
            locked = self._try_flock(fd)
            if locked is False:
                raise self._refuse(read_lock_info(self.path))
            if locked is None:
                info = read_lock_info(self.path)
                if info and info.get('pid') != os.getpid() and (
                        info.get('host') != socket.gethostname() or _pid_alive(int(info.get('pid', -1)))):
                    raise self._refuse(info)
        finally:
            os.close(fd)  # closing the descriptor drops the probe's own flock

    def acquire(self) -> 'FolderLock':
        try:
            os.makedirs(self.folder, exist_ok=True)
        except OSError as e:
            raise OutputError(f"cannot create {self.what} {self.folder}: {e.strerror or e}") from None
        for _ in range(10):  # retry when the file is replaced between open and lock
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise OutputError(f"cannot create the lock file {self.path}: {e.strerror or e}") from None
            locked = self._try_flock(fd)
            if locked is False:
                os.close(fd)
                raise self._refuse(read_lock_info(self.path))
            if locked is None:  # no flock here: trust a live pid on this host
                info = read_lock_info(self.path)
                if info and info.get('pid') != os.getpid() and (
                        info.get('host') != socket.gethostname() or _pid_alive(int(info.get('pid', -1)))):
                    os.close(fd)
                    raise self._refuse(info)
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            self._fd = fd
            self._write_info()
            return self
        raise OutputError(f"cannot lock {self.path}: it keeps being replaced by another process")

    @staticmethod
    def _try_flock(fd: int) -> bool | None:
        if fcntl is None:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        except OSError:  # ENOLCK / EOPNOTSUPP on file systems without flock
            return None

    def _write_info(self) -> None:
        info = {'pid': os.getpid(), 'host': socket.gethostname(), 'started': time.strftime('%Y-%m-%d %H:%M:%S'),
                'command': ' '.join([os.path.basename(sys.executable)] + sys.argv)[:500]}
        data = (json.dumps(info) + '\n').encode('utf-8', 'backslashreplace')
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, data, 0)

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)  # before unlocking: a waiter that opened the old file re-checks the inode
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> 'FolderLock':
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
