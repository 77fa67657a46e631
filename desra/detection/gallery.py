"""``index.html``: a gallery of LR | MSE-SR | GAN-SR | D | overlay, one row per image, with artifact areas."""
from __future__ import annotations

import html
import os

from desra.atomic import atomic_open

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 16px; background: #fafafa; color: #222; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ddd; padding: 4px; vertical-align: top; text-align: center; background: #fff; }
th { position: sticky; top: 0; background: #eee; }
td img { width: 220px; image-rendering: pixelated; display: block; }
td.name { text-align: left; font-family: monospace; max-width: 180px; word-break: break-all; }
.big { color: #b00; font-weight: bold; }
"""


def write_gallery(root: str, records: list[dict], title: str = 'DeSRA detections', overlays: bool = True) -> str:
    """Write ``root/index.html`` (atomically) from the per-image records; image links are relative."""
    def cell(path):
        if not path or not os.path.isfile(path):
            return '<td>&mdash;</td>'
        rel = html.escape(os.path.relpath(os.path.abspath(path), os.path.abspath(root)).replace(os.sep, '/'))
        return f'<td><a href="{rel}"><img loading="lazy" src="{rel}" alt="{rel}"></a></td>'

    show_lr = any(r.get('lr') for r in records)  # mode (b) has no LR column
    total = sum(r['artifact_pixels'] for r in records)
    flagged = sum(1 for r in records if r['artifact_pixels'] > 0)
    rows = []
    for r in sorted(records, key=lambda r: -r['artifact_fraction']):
        pct = 100 * r['artifact_fraction']
        cls = ' class="big"' if pct >= 1 else ''
        rows.append('<tr>'
                    f'<td class="name">{html.escape(r["name"])}<br>{r["width"]}x{r["height"]}</td>'
                    f'<td{cls}>{pct:.2f}%<br>{r["artifact_pixels"]:,} px<br>{r["regions"]} region(s)</td>'
                    + (cell(r.get('lr')) if show_lr else '') + cell(r.get('mse_sr')) + cell(r.get('gan_sr')) + cell(r.get('d_map'))
                    + (cell(r.get('overlay')) if overlays else cell(r.get('mask'))) + '</tr>')
    last = 'GAN-SR + artifacts (red)' if overlays else 'mask'
    doc = (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
           f'<style>{_STYLE}</style></head><body>\n<h1>{html.escape(title)}</h1>\n'
           f'<p>{len(records)} image(s); {flagged} with artifacts; {total:,} artifact pixels in all. '
           'Sorted by artifact area. D: texture-similarity map (red = low similarity = artifact candidate).</p>\n'
           '<table><tr><th>image</th><th>artifact area</th>' + ('<th>LR</th>' if show_lr else '')
           + '<th>MSE-SR</th><th>GAN-SR</th><th>D</th>'
           f'<th>{last}</th></tr>\n' + '\n'.join(rows) + '\n</table></body></html>\n')
    path = os.path.join(root, 'index.html')
    with atomic_open(path, 'w') as f:
        f.write(doc)
    return path
