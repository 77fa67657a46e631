"""Atomic file writes: the bytes go to a temporary file in the target's folder, fsync, rename.

A crash or exception at any point leaves an existing file at the target path untouched; readers never see a
half-written file under the real name. The content is assembled in memory first, so the size a write needs
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

from desra.errors import OutputError

__all__ = ['atomic_open', 'atomic_write_bytes', 'fsync_dir', 'remove_stale_temp_files', 'format_bytes',
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
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    size = memoryview(data).nbytes
    _makedirs(folder, path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f'.{os.path.basename(path)}.', suffix='.tmp', dir=folder)
    except OSError as e:
        raise output_error(path, e, size) from None
    try:
        try:
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600 files; the result should look like any other
            _write_file(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(e, OSError):
            raise output_error(path, e, size) from None
        raise
    fsync_dir(folder)
    return size


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
