"""Compute DeSRA per-class weights (paper Eq. 8) from MSE-SR / GAN-SR pairs and their semantic labels.

The authors did not release this step; this script writes a class file in their format plus a JSON file
with the statistics behind it (see :mod:`desra.detection.semantics` for the exact definitions)::

    python scripts/compute_class_weights.py --mse MSE-SR --gan GAN-SR --labels LABELS --out weights/mine
    python scripts/compute_class_weights.py --mse MSE-SR --gan GAN-SR --segmenter segformer \\
        --segformer-model nvidia/segformer-b5-finetuned-ade-640-640 --out weights/mine

writes ``weights/mine.txt`` (``classname--idx`` lines sorted by name, the released format; only for the
released 20 bins) and ``weights/mine.json``. Images are paired by relative path without extension, flat
or ``root/<sub>/<img>``; a missing twin is an error naming the file. Label maps (``--labels``) are
single-channel PNGs of ADE20K class indices (uint8 or uint16) at SR size, named like the images.
Images are streamed one at a time into a fixed-size histogram: memory does not grow with the data set.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from desra.cli import run_cli  # noqa: E402
from desra.errors import ConfigError, DataError  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--mse', required=True, help='folder of MSE-SR images')
    p.add_argument('--gan', required=True, help='folder of GAN-SR images')
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument('--labels', help='folder of label PNGs (ADE20K class indices, SR size)')
    src.add_argument('--segmenter', choices=['segformer'], help='segment the GAN-SR images on the fly')
    p.add_argument('--segformer-model', default='nvidia/segformer-b5-finetuned-ade-640-640',
                   help='transformers SegFormer: local folder or hub id')
    p.add_argument('--device', default='auto', help="'auto', 'cpu', 'cuda', 'cuda:1', ... (segmenter only)")
    p.add_argument('--out', required=True, help='output prefix: writes PREFIX.txt and PREFIX.json')
    p.add_argument('--bins', type=int, default=20, help='histogram bins over [0, 1] (released: 20)')
    p.add_argument('--coverage', type=float, default=0.85, help='fraction of a class above its bin (0.85)')
    p.add_argument('--window', choices=['gaussian', 'box'], default='gaussian', help='indicator window')
    p.add_argument('--window-size', type=int, default=11)
    return p.parse_args(argv)


def pair_folders(mse_root: str, gan_root: str, labels_root: str | None):
    """Sorted ``(name, mse path, gan path, label path or None)``; any unmatched file is a DataError."""
    from desra.detection.pipeline import list_images

    mse, _ = list_images(mse_root, '--mse')
    gan, _ = list_images(gan_root, '--gan')
    labels = list_images(labels_root, '--labels')[0] if labels_root else None
    for names, other, root in ((gan, mse, mse_root), (mse, gan, gan_root)):
        missing = sorted(set(names) - set(other))
        if missing:
            raise DataError(f'{names[missing[0]]} has no twin in {root} ({len(missing)} unpaired image(s); '
                            'images are paired by relative path without extension)')
    if labels is not None:
        missing = sorted(set(gan) - set(labels))
        if missing:
            raise DataError(f'{gan[missing[0]]} has no label map in {labels_root} ({len(missing)} missing)')
    return [(n, mse[n], gan[n], labels[n] if labels is not None else None) for n in sorted(gan)]


def read_label_map(path: str, size: tuple[int, int]) -> np.ndarray:
    from desra.data.io import imread

    lab = imread(path, flag='unchanged')
    if lab.ndim != 2 or lab.dtype not in (np.uint8, np.uint16):
        raise DataError(f'{path}: a label map must be a single-channel 8- or 16-bit image of class indices, '
                        f'got shape {lab.shape} dtype {lab.dtype}')
    if lab.shape != tuple(size):
        raise DataError(f'{path}: label map is {lab.shape[0]}x{lab.shape[1]} but the SR images are '
                        f'{size[0]}x{size[1]}')
    return lab


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch

    from desra.detection import ADE20K_CLASSES, ClassHistogram, texture_similarity
    from desra.detection.pipeline import read_sr_image
    from desra.detection.semantics import write_class_file, write_class_json

    if not 0 < args.coverage < 1:
        raise ConfigError(f'--coverage must be in (0, 1), got {args.coverage}')
    if args.bins < 1:
        raise ConfigError(f'--bins must be a positive integer, got {args.bins}')
    if args.window_size < 1 or args.window_size % 2 == 0:
        raise ConfigError(f'--window-size must be an odd positive integer, got {args.window_size}')
    pairs = pair_folders(args.mse, args.gan, args.labels)
    segmenter = None
    if args.segmenter:
        from desra.detection.segmenters import build_segmenter
        from desra.engine.dist import get_device

        device = get_device('auto') if args.device == 'auto' else torch.device(args.device)
        segmenter = build_segmenter({'type': 'segformer', 'model': args.segformer_model}, device)

    hist = ClassHistogram(num_classes=len(ADE20K_CLASSES), bins=args.bins)
    h = args.window_size // 2
    t0 = time.time()
    for i, (name, mse_path, gan_path, label_path) in enumerate(pairs):
        mse, gan = read_sr_image(mse_path), read_sr_image(gan_path)
        if mse.shape != gan.shape:
            raise DataError(f'{mse_path} is {mse.shape[0]}x{mse.shape[1]} but its twin {gan_path} is '
                            f'{gan.shape[0]}x{gan.shape[1]}')
        if label_path is not None:
            labels = read_label_map(label_path, mse.shape[:2])
        else:
            rgb = torch.from_numpy(np.ascontiguousarray(gan[..., ::-1]) / 255.0).permute(2, 0, 1)[None].float()
            labels = segmenter(rgb.to(device))[0].cpu().numpy()
        D = texture_similarity(mse, gan, window=args.window, window_size=args.window_size)
        try:
            hist.update(D, labels[h:labels.shape[0] - h, h:labels.shape[1] - h])
        except ValueError as e:
            raise DataError(f'{label_path or gan_path}: {e}') from None
        print(f'[{i + 1}/{len(pairs)}] {name}', flush=True)

    idx = hist.bin_index(args.coverage)
    source = {'mse': os.path.abspath(args.mse), 'gan': os.path.abspath(args.gan),
              'labels': os.path.abspath(args.labels) if args.labels else None,
              'segmenter': {'type': args.segmenter, 'model': args.segformer_model} if args.segmenter else None,
              'window': args.window, 'window_size': args.window_size, 'images': len(pairs),
              'created': time.strftime('%Y-%m-%d %H:%M:%S')}
    written = []
    if args.bins == 20:
        write_class_file(args.out + '.txt', idx)
        written.append(args.out + '.txt')
    else:
        print(f'note: --bins {args.bins}: no .txt written (the released format assumes 20 bins)', flush=True)
    write_class_json(args.out + '.json', idx, p85=hist.p85(args.coverage), counts=hist.totals, bins=args.bins,
                     coverage=args.coverage, source=source)
    written.append(args.out + '.json')
    seen = int((hist.totals > 0).sum())
    print(f'{len(pairs)} image pair(s), {int(hist.totals.sum())} pixels, {seen} classes seen '
          f'({time.time() - t0:.1f} s); wrote {", ".join(written)}', flush=True)
    return {'idx': idx, 'hist': hist, 'written': written}


if __name__ == '__main__':
    run_cli(main)
