"""Reading image bytes from disk or from BasicSR's LMDB layout (``io_backend: {type: disk | lmdb}``).

BasicSR's LMDB layout: a folder ``<name>.lmdb`` holding ``data.mdb`` (+ ``lock.mdb``) and ``meta_info.txt``, one
line per image, ``<key>.png (h,w,c) <png compression level>``; the value stored under ``key`` (ASCII) is the
encoded image file. ``scripts/create_lmdb.py`` writes it. The ``lmdb`` package is an optional extra
(``pip install lmdb``); without it an ``lmdb`` backend stops with a message saying so.

The environment is opened lazily, in the process that reads (DataLoader workers each open their own), read-only
and without locking, as BasicSR does.
"""
from __future__ import annotations

import os
import re

from desra.errors import ConfigError, DataError

__all__ = ['require_lmdb', 'read_lmdb_meta', 'LmdbReader', 'read_bytes']

_META_LINE = re.compile(r'^(?P<name>\S+)\s+\((?P<shape>\s*\d+\s*(?:,\s*\d+\s*){1,2})\)(?:\s+(?P<level>\d+))?\s*$')


def require_lmdb(key_path: str = 'io_backend.type'):
    try:
        import lmdb
    except ImportError:
        raise ConfigError(f"{key_path}: lmdb needs the 'lmdb' package, which is not installed; run "
                          f"`pip install lmdb` (or pip install -e \".[lmdb]\"), or use io_backend: {{type: disk}}") \
            from None
    return lmdb


def read_lmdb_meta(db_path: str, key_path: str) -> list[tuple[str, tuple]]:
    """``[(key, (h, w, c)), ...]`` from ``<db_path>/meta_info.txt``; DataError naming the file on a bad line."""
    if not db_path.endswith('.lmdb'):
        raise ConfigError(f"{key_path}: an lmdb data root must end with '.lmdb', got {db_path}")
    if not os.path.isdir(db_path):
        raise DataError(f'{key_path}: lmdb folder does not exist: {os.path.abspath(db_path)}')
    meta = os.path.join(db_path, 'meta_info.txt')
    if not os.path.isfile(meta):
        raise DataError(f'{key_path}: {os.path.abspath(db_path)} has no meta_info.txt (BasicSR layout: lines '
                        f'"<key>.png (h,w,c) <level>"; scripts/create_lmdb.py writes it)')
    entries = []
    with open(meta, encoding='utf-8') as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            m = _META_LINE.match(line.strip())
            if not m:
                raise DataError(f'{meta}: line {n} is not "<key>.png (h,w,c) <level>": {line.strip()!r}')
            name = m.group('name')
            key = name.rsplit('.', 1)[0] if '.' in os.path.basename(name) else name
            entries.append((key, tuple(int(x) for x in m.group('shape').split(','))))
    if not entries:
        raise DataError(f'{meta} lists no images')
    return entries


class LmdbReader:
    """``reader.get(key) -> bytes`` from one LMDB folder; keys checked against its ``meta_info.txt`` on demand."""

    def __init__(self, db_path: str, key_path: str):
        self.db_path, self.key_path = db_path, key_path
        self._env = None

    def _open(self):
        if self._env is None:
            lmdb = require_lmdb(f'{self.key_path}.io_backend.type')
            try:
                self._env = lmdb.open(self.db_path, readonly=True, lock=False, readahead=False, meminit=False)
            except lmdb.Error as e:
                raise DataError(f'{self.key_path}: cannot open lmdb {os.path.abspath(self.db_path)}: {e}') from None
        return self._env

    def keys(self) -> list[str]:
        with self._open().begin(write=False) as txn:
            return [k.decode('ascii', 'replace') for k in txn.cursor().iternext(keys=True, values=False)]

    def get(self, key: str) -> bytes:
        with self._open().begin(write=False) as txn:
            value = txn.get(key.encode('ascii'))
        if value is None:
            raise DataError(f"{self.key_path}: key '{key}' is not in the lmdb {os.path.abspath(self.db_path)}")
        return bytes(value)

    def __getstate__(self):  # a DataLoader worker opens its own environment
        return {'db_path': self.db_path, 'key_path': self.key_path, '_env': None}


def check_lmdb_keys(db_path: str, key_path: str) -> list[str]:
    """Keys of ``meta_info.txt``, after checking that they are exactly the database's keys."""
    listed = [k for k, _ in read_lmdb_meta(db_path, key_path)]
    stored = set(LmdbReader(db_path, key_path).keys())
    missing = [k for k in listed if k not in stored]
    if missing:
        raise DataError(f"{key_path}: key '{missing[0]}' is listed in {os.path.join(db_path, 'meta_info.txt')} but is "
                        f"not in the database ({len(missing)} such key(s)); rebuild it with scripts/create_lmdb.py")
    unlisted = sorted(stored - set(listed))
    if unlisted:
        raise DataError(f"{key_path}: key '{unlisted[0]}' is in the database {os.path.abspath(db_path)} but not in its "
                        f"meta_info.txt ({len(unlisted)} such key(s)): the listing is out of date; rebuild it with "
                        f"scripts/create_lmdb.py")
    return listed


def read_bytes(path: str) -> bytes:
    try:
        with open(path, 'rb') as f:
            return f.read()
    except FileNotFoundError:
        raise DataError(f'image file does not exist: {os.path.abspath(path)}') from None
    except IsADirectoryError:
        raise DataError(f'expected an image file but found a folder: {os.path.abspath(path)}') from None
    except OSError as e:
        raise DataError(f'cannot read image {os.path.abspath(path)}: {e.strerror or e}') from None
