"""Fingerprints: what made an output, as a short hash plus the settings themselves.

An output (a detection record, a pipeline stage) stores the fingerprint of everything that decides it. A rerun
reuses the output only when the fingerprint is the same, and otherwise says which setting changed
(:func:`changed_keys`).

* Settings are hashed as canonical JSON (sorted keys, floats by ``repr``), so ``{a: 1, b: 2}`` written in any
  order gives the same hash.
* Weight files (checkpoints, class-weight files) are identified by the SHA-256 of their content: a copied or
  touched file with the same bytes is the same file. Hashes are cached per process by (path, size, mtime).
* Input images are identified by (absolute path, size, modification time in ns), which is cheap for
  thousands of files; rewriting an input with new content changes its mtime.
"""
from __future__ import annotations

import hashlib
import json
import math
import os

__all__ = ['RecordedOutputs', 'canonical_json', 'settings_hash', 'file_sha256', 'file_identity', 'weights_identity',
           'changed_keys']

_SHA_CACHE: dict[tuple, str] = {}
_CHUNK = 1 << 20


def _normalise(obj):
    if isinstance(obj, dict):
        return {str(k): _normalise(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_normalise(v) for v in obj]
    if isinstance(obj, float):
        if math.isnan(obj) or math.isinf(obj):
            return repr(obj)
        return float(repr(obj))
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    return repr(obj)


def canonical_json(obj) -> str:
    return json.dumps(_normalise(obj), sort_keys=True, separators=(',', ':'), ensure_ascii=True)


def settings_hash(obj, length: int = 16) -> str:
    """Hex SHA-256 (first ``length`` characters) of the canonical JSON of ``obj``."""
    return hashlib.sha256(canonical_json(obj).encode('ascii')).hexdigest()[:length]


def file_sha256(path: str) -> str:
    """Full hex SHA-256 of a file's content (cached by path, size and mtime within this process)."""
    path = os.path.abspath(path)
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(path, 'rb') as f:
            for block in iter(lambda: f.read(_CHUNK), b''):
                h.update(block)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def file_identity(path: str) -> dict:
    """``{'path', 'size', 'mtime_ns'}`` of an input file (no content read)."""
    path = os.path.abspath(path)
    st = os.stat(path)
    return {'path': path, 'size': st.st_size, 'mtime_ns': st.st_mtime_ns}


def weights_identity(path: str | None) -> dict | str | None:
    """Content identity of a weight file, or of every file of a weight folder (a ``save_pretrained`` folder).

    Anything that is not an existing file or folder (a hub id) is returned as given.
    """
    if not path:
        return path
    if os.path.isfile(path):
        return {'sha256': file_sha256(path), 'size': os.path.getsize(path)}
    if os.path.isdir(path):
        files = {}
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames.sort()
            for name in sorted(filenames):
                if name.startswith('.'):
                    continue
                p = os.path.join(dirpath, name)
                files[os.path.relpath(p, path)] = file_sha256(p)
        return {'folder_sha256': settings_hash(files, 64), 'files': len(files)}
    return path


def changed_keys(old, new, prefix: str = '') -> list[str]:
    """Dotted key paths where two settings dicts differ (``['detector.threshold']``)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            path = f'{prefix}.{k}' if prefix else str(k)
            if k not in old or k not in new:
                out.append(path)
            else:
                out.extend(changed_keys(old[k], new[k], path))
        return out
    return [] if canonical_json(old) == canonical_json(new) else [prefix or '(all)']


class RecordedOutputs:
    """An output root whose images each have a JSON record ``records/<name>.json`` holding the fingerprint of the
    settings and inputs that made them: the part shared by ``detect.py``'s and ``fuse.py``'s writers."""

    def __init__(self, root: str, settings: dict | None):
        self.root = root
        self.settings = settings or {}
        self.settings_fp = settings_hash(self.settings)

    def path(self, kind: str, name: str, ext: str = '.png') -> str:
        return os.path.join(self.root, kind, name + ext)

    def read_record(self, name: str) -> dict | None:
        try:
            with open(self.path('records', name, '.json'), encoding='utf-8') as f:
                rec = json.load(f)
        except (OSError, ValueError):
            return None
        return rec if isinstance(rec, dict) else None

    def stale_reason(self, rec: dict | None, inputs: dict, needed) -> str | None:
        """None when ``rec`` was made with these settings from these ``inputs`` and every file of ``needed``
        (paths; None entries ignored) exists; else why the image must be computed again."""
        if rec is None:
            return 'new'
        fp = rec.get('fingerprint') or {}
        if not fp:
            return 'record without a fingerprint (earlier version)'
        if fp.get('settings') != self.settings_fp:
            keys = changed_keys(rec.get('settings') or {}, self.settings)
            return 'settings changed: ' + (', '.join(keys[:4]) + (' ...' if len(keys) > 4 else '') if keys else '?')
        if fp.get('inputs') != settings_hash(inputs):
            return 'input file changed'
        if any(p and not os.path.isfile(p) for p in needed):
            return 'output files missing'
        return None
