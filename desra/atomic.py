"""Atomic file writes: the bytes go to a temporary file in the target's folder, fsync, rename.

A crash or exception at any point leaves an existing file at the target path untouched; readers never see a
half-written file under the real name. :func:`commit_files` writes a group of files (one detected image's
outputs) as one durable commit, with a last file (its record) that appears only once the others are on disk:
one fsync pass over all of them (in parallel, so the file system can commit them together) and one fsync per
folder, instead of two fsyncs per file. The content is assembled in memory first, so the size a write needs
is known before the disk is touched, and a failure (disk full, read-only or unwritable folder) is reported as
one :class:`~desra.errors.OutputError` line naming the file, the bytes needed and the space that was free.

Temporary files are named ``.<target name>.<8 random characters>.tmp``; a process killed in the middle of a
write leaves one behind, which :func:`remove_stale_temp_files` deletes at the next start in that folder (the
caller holds the folder's lock, so no live writer owns it).
"""
from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import shutil
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor

from desra.errors import OutputError

__all__ = ['atomic_open', 'atomic_write_bytes', 'commit_files', 'fsync_dir', 'remove_stale_temp_files', 'format_bytes',
           'output_error']

_TEMP_NAME = re.compile(r'^\..+\.[a-z0-9_]{8}\.tmp$')


def format_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'``; exact byte counts below 1 KiB."""
    if n < 1024:
        return f'{int(n)} B'
    for unit in ('KiB', 'MiB', 'GiB', 'TiB'):
        n /= 1024.0
        if n < 1024 or unit == 'TiB':
            return f'{n:.1f} {unit}'
    return f'{n:.1f} TiB'


def _free_space(folder: str) -> int | None:
    while folder and not os.path.isdir(folder):
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def output_error(path: str, e: OSError, needed: int | None = None) -> OutputError:
    """One-line :class:`OutputError` for an ``OSError`` raised while writing ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    code = getattr(e, 'errno', None)
    if code in (errno.ENOSPC, getattr(errno, 'EDQUOT', -1)):
        free = _free_space(folder)
        need = f'{format_bytes(needed)} needed' if needed is not None else 'more space needed'
        have = f', {format_bytes(free)} free' if free is not None else ''
        what = 'disk quota exceeded' if code != errno.ENOSPC else 'no space left on the device'
        return OutputError(f"cannot write {path}: {what} ({need}{have} in {folder}); earlier files are intact. "
                           "Free some space and run the command again")
    if code in (errno.EACCES, errno.EPERM):
        return OutputError(f"cannot write {path}: permission denied; {folder} is not writable by this user")
    if code == errno.EROFS:
        return OutputError(f"cannot write {path}: {folder} is on a read-only file system")
    if code == errno.ENOTDIR:
        return OutputError(f"cannot write {path}: a part of the folder path {folder} is a file, not a folder")
    return OutputError(f"cannot write {path}: {e.strerror or e}")


def _makedirs(folder: str, target: str) -> None:
    try:
        os.makedirs(folder, exist_ok=True)
    except FileExistsError:  # the folder path exists as a file
        raise output_error(target, OSError(errno.ENOTDIR, 'not a folder')) from None
    except OSError as e:
        raise output_error(target, e) from None


def _write_file(fd: int, data) -> None:
    """Write every byte of ``data`` to ``fd`` (``os.write`` may write less than asked)."""
    view = memoryview(data).cast('B')
    while view:
        n = os.write(fd, view)
        view = view[n:]


def atomic_write_bytes(path: str | os.PathLike, data) -> int:
    """Write ``data`` (bytes-like) to ``path`` atomically; returns the number of bytes written.

    Raises:
        OutputError: the folder cannot be created or written, or the disk is full; ``path`` is unchanged and
            no temporary file is left behind.
    """
    return commit_files([(path, data)])


def commit_files(files, last=None) -> int:
    """Write ``files`` (``(path, bytes-like)`` pairs) atomically as one durable commit, then ``last``.

    1. every file's bytes (``last``'s too) go to a temporary file in its folder, unsynced;
    2. one fsync pass over the temporary files, run in parallel;
    3. the files are renamed to their names, then each folder touched is fsynced once;
    4. only then ``last`` (a record saying the others are complete) is renamed into place and its folder synced.

    Whenever the process dies, every name holds either its old content or its complete new content, and
    ``last`` never appears (or is replaced) before the files it follows are durable under their names. A failed
    write or fsync renames nothing and removes the temporary files; returns the number of bytes written.

    Raises:
        OutputError: as :func:`atomic_write_bytes`, naming the file that could not be written.
    """
    entries = [(os.path.abspath(os.fspath(p)), d) for p, d in files]
    if last is not None:
        entries.append((os.path.abspath(os.fspath(last[0])), last[1]))
    mode = 0o666 & ~_umask()  # mkstemp makes 0600 files; the results should look like any other
    temps = []  # [fd, tmp, path, size]; fd None once closed, tmp None once renamed
    try:
        for path, data in entries:
            size = memoryview(data).nbytes
            _makedirs(os.path.dirname(path), path)
            try:
                fd, tmp = tempfile.mkstemp(prefix=f'.{os.path.basename(path)}.', suffix='.tmp',
                                           dir=os.path.dirname(path))
            except OSError as e:
                raise output_error(path, e, size) from None
            temps.append([fd, tmp, path, size])
            try:
                os.fchmod(fd, mode)
                _write_file(fd, data)
            except OSError as e:
                raise output_error(path, e, size) from None
        _fsync_all(temps)
        for t in temps:
            fd, t[0] = t[0], None
            os.close(fd)
        body = temps[:-1] if last is not None else temps
        for t in body:
            _rename(t)
        folders = list(dict.fromkeys(os.path.dirname(t[2]) for t in body))
        _parallel(fsync_dir, folders)
        if last is not None:
            _rename(temps[-1])
            fsync_dir(os.path.dirname(temps[-1][2]))
    except BaseException:
        for fd, tmp, _, _ in temps:
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.remove(tmp)
        raise
    return sum(t[3] for t in temps)


def _rename(t: list) -> None:
    try:
        os.replace(t[1], t[2])
    except OSError as e:
        raise output_error(t[2], e, t[3]) from None
    t[1] = None


def _fsync_fd(fd: int) -> None:
    os.fsync(fd)


def _fsync_all(temps: list) -> None:
    """fsync every open temporary file; the first failure (in order) is raised as an :class:`OutputError`."""
    errors = _parallel(lambda t: _fsync_fd(t[0]), temps, catch=OSError)
    for t, e in zip(temps, errors):
        if e is not None:
            raise output_error(t[2], e, t[3]) from None


_POOL_LOCK = threading.Lock()
_POOL: dict = {}


def _parallel(fn, items: list, catch=()) -> list:
    """``fn`` over ``items`` on a small process-wide thread pool (fsync waits on the disk, not the CPU).

    Returns, per item, the exception of type ``catch`` it raised, or None; other exceptions propagate.
    """
    def call(item):
        try:
            fn(item)
        except catch as e:
            return e
        return None

    if len(items) <= 1:
        return [call(i) for i in items]
    with _POOL_LOCK:
        if _POOL.get('pid') != os.getpid():  # a forked child has the object but not the threads
            _POOL.update(pool=ThreadPoolExecutor(8, thread_name_prefix='desra-fsync'), pid=os.getpid())
        pool = _POOL['pool']
    return list(pool.map(call, items))


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = 'wb'):
    """A file object whose content replaces ``path`` when the ``with`` block ends without an exception.

    ``mode`` is ``'wb'`` (a binary buffer: ``torch.save``, ``np.save``) or ``'w'`` (text, UTF-8; file names
    that are not valid UTF-8 are written back as their original bytes). The content is kept in memory and
    written by :func:`atomic_write_bytes` at the end of the block; an exception inside the block writes nothing.
    """
    if mode not in ('w', 'wb'):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', got {mode!r}")
    buf = io.BytesIO() if mode == 'wb' else io.StringIO()
    yield buf
    data = buf.getbuffer() if mode == 'wb' else buf.getvalue().encode('utf-8', 'surrogateescape')
    atomic_write_bytes(path, data)


def _umask() -> int:
    """The process umask, read without changing it where /proc allows (writer threads run concurrently)."""
    try:
        with open('/proc/self/status', encoding='ascii') as f:
            for line in f:
                if line.startswith('Umask:'):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(folder: str) -> None:
    """Make a rename in ``folder`` durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temp_files(folder: str, recursive: bool = True) -> list[str]:
    """Delete the temporary files that killed :func:`atomic_write_bytes` calls left in ``folder``.

    Only names of the form ``.<name>.<8 chars>.tmp`` are touched. Call it only while holding the folder's
    lock (no other writer is active). Returns the removed paths.
    """
    removed = []
    if not os.path.isdir(folder):
        return removed
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in filenames:
            if _TEMP_NAME.match(name):
                p = os.path.join(dirpath, name)
                with contextlib.suppress(OSError):
                    os.remove(p)
                    removed.append(p)
        if not recursive:
            break
    return removed
