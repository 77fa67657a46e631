"""``index.html``: a gallery of LR | MSE-SR | GAN-SR | D | overlay, one row per image, with artifact areas."""
from __future__ import annotations

import html
import os
from urllib.parse import quote

from desra.atomic import atomic_open
from desra.utils.images import display_name

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 16px; background: #fafafa; color: #222; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ddd; padding: 4px; vertical-align: top; text-align: center; background: #fff; }
th { position: sticky; top: 0; background: #eee; }
td img { width: 220px; image-rendering: pixelated; display: block; }
td.name { text-align: left; font-family: monospace; max-width: 180px; word-break: break-all; }
.big { color: #b00; font-weight: bold; }
"""


DETECTION_COLUMNS = [('LR', 'lr'), ('MSE-SR', 'mse_sr'), ('GAN-SR', 'gan_sr'), ('D', 'd_map'),
                     ('GAN-SR + artifacts (red)', 'overlay')]


def area_cell(r: dict) -> str:
    pct = 100 * r['artifact_fraction']
    cls = ' class="big"' if pct >= 1 else ''
    return f'<td{cls}>{pct:.2f}%<br>{r["artifact_pixels"]:,} px<br>{r["regions"]} region(s)</td>'


def write_gallery(root: str, records: list[dict], title: str = 'DeSRA detections', overlays: bool = True,
                  columns: list[tuple[str, str]] | None = None, info=area_cell, info_title: str = 'artifact area',
                  intro: str | None = None, sort_key=lambda r: -r['artifact_fraction']) -> str:
    """Write ``root/index.html`` (atomically): one row per record, one picture column per ``(title, key)``.

    Image links are relative to ``root`` and percent-encoded (names with ``#``, ``?``, ``%``, spaces or bytes that
    are not UTF-8 work); a column whose files exist for no record (e.g. LR in mode (b)) is left out.
    ``info(record)`` renders the text cell after the name.
    """
    def cell(path):
        if not path or not os.path.isfile(path):
            return '<td>&mdash;</td>'
        rel = os.path.relpath(os.path.abspath(path), os.path.abspath(root)).replace(os.sep, '/')
        url = html.escape(quote(rel, safe='/', errors='surrogateescape'))
        alt = html.escape(display_name(rel))
        return f'<td><a href="{url}"><img loading="lazy" src="{url}" alt="{alt}"></a></td>'

    if columns is None:
        columns = list(DETECTION_COLUMNS)
        if not overlays:
            columns[-1] = ('mask', 'mask')
    columns = [(t, k) for t, k in columns if any(r.get(k) for r in records)]
    if intro is None:
        total = sum(r['artifact_pixels'] for r in records)
        flagged = sum(1 for r in records if r['artifact_pixels'] > 0)
        intro = (f'{len(records)} image(s); {flagged} with artifacts; {total:,} artifact pixels in all. '
                 'Sorted by artifact area. D: texture-similarity map (red = low similarity = artifact candidate).')
    rows = []
    for r in sorted(records, key=sort_key):
        size = f'<br>{r["width"]}x{r["height"]}' if 'width' in r else ''
        rows.append('<tr>' f'<td class="name">{html.escape(display_name(r["name"]))}{size}</td>' + info(r)
                    + ''.join(cell(r.get(k)) for _, k in columns) + '</tr>')
    head = ''.join(f'<th>{html.escape(t)}</th>' for t, _ in columns)
    doc = (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
           f'<style>{_STYLE}</style></head><body>\n<h1>{html.escape(title)}</h1>\n<p>{intro}</p>\n'
           f'<table><tr><th>image</th><th>{html.escape(info_title)}</th>{head}</tr>\n' + '\n'.join(rows)
           + '\n</table></body></html>\n')
    path = os.path.join(root, 'index.html')
    with atomic_open(path, 'w') as f:
        f.write(doc)
    return path
