"""``MANIFEST.json`` of a weights folder: which file came from where, its sha256 and whether it was verified.

The manifest is a JSON list of entries, one per file, sorted by ``file``::

    [
      {"file": "RealESRGAN_x4plus.pth", "sha256": "...", "size": 67040989, "source": "official",
       "url": "https://...", "verified": true, "date": "2024-01-01T12:00:00+00:00"},
      ...
    ]

Only ``file`` is required; the other keys are what the writers (the download script, the PyPI converter) know.
The file is rewritten atomically, so an interrupted update never leaves a half-written manifest.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Iterable

from desra.atomic import atomic_open
from desra.errors import CheckpointError

MANIFEST_NAME = 'MANIFEST.json'


def manifest_path(out_dir: str) -> str:
    return os.path.join(out_dir, MANIFEST_NAME)


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read ``chunk`` bytes at a time."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def read_manifest(out_dir: str) -> list[dict]:
    """The entries of ``out_dir/MANIFEST.json`` sorted by file; ``[]`` when there is no manifest yet.

    Also accepts ``{"files": [...]}`` and ``{file_name: entry}`` layouts. A manifest that is not valid JSON
    raises :class:`CheckpointError` naming the file.
    """
    path = manifest_path(out_dir)
    if not os.path.exists(path):
        return []
    try:
        with open(path, encoding='utf-8') as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f'{path}: cannot read the weights manifest ({e}); fix it or delete it, '
                              'it is rebuilt by the next download') from e
    if isinstance(data, dict) and isinstance(data.get('files'), list):
        data = data['files']
    elif isinstance(data, dict):
        data = [dict(v, file=k) if isinstance(v, dict) else {'file': k} for k, v in data.items()]
    if not isinstance(data, list) or not all(isinstance(e, dict) and isinstance(e.get('file'), str) for e in data):
        raise CheckpointError(f'{path}: expected a JSON list of entries with a "file" key; '
                              'fix it or delete it, it is rebuilt by the next download')
    return sorted(data, key=lambda e: e['file'])


def update_manifest(out_dir: str, entries: Iterable[dict] | dict) -> list[dict]:
    """Merge ``entries`` into ``out_dir/MANIFEST.json``: an entry replaces the one with the same ``file``.

    Entries for other files are kept. The result is written atomically, sorted by file, with indent 2, and
    returned.
    """
    if isinstance(entries, dict):
        entries = [entries]
    by_file = {e['file']: e for e in read_manifest(out_dir)}
    for e in entries:
        if not isinstance(e, dict) or not isinstance(e.get('file'), str) or not e['file']:
            raise ValueError(f'manifest entry without a "file" name: {e!r}')
        by_file[e['file']] = dict(e)
    merged = [by_file[k] for k in sorted(by_file)]
    os.makedirs(out_dir, exist_ok=True)
    with atomic_open(manifest_path(out_dir), 'w') as f:
        json.dump(merged, f, indent=2, sort_keys=False)
        f.write('\n')
    return merged
