"""Demo: real photos -> x4 LR -> Real-ESRGAN x4plus -> a short LDL fine-tune -> PSNR/SSIM before and after.

Runs on a 2-core CPU in a few minutes. Uses the Real-ESRGAN x4plus weights from ``pretrained/`` or
``../shared/weights/`` when present; without them it trains a small RRDB from scratch instead (and says so).
Outputs go to ``results/demo/`` (data, SR images, metrics) and ``experiments/demo_ldl_finetune/``.

The full DeSRA detection demo (masks, overlays, HTML gallery) replaces this once detection lands.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

import cv2
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

PHOTOS = {  # skimage.data sample images; all public domain / CC0 (skimage's data/README)
    'astronaut': (slice(0, 256), slice(128, 384)),
    'coffee': (slice(72, 328), slice(172, 428)),
    'chelsea': (slice(22, 278), slice(97, 353)),
    'rocket': (slice(85, 341), slice(192, 448)),
}
WEIGHT_CANDIDATES = ['pretrained/RealESRGAN_x4plus.pth', 'pretrained/RealESRGAN_x4plus.safetensors',
                     '../shared/weights/RealESRGAN_x4plus.safetensors']


def make_photos(out_dir: str) -> None:
    """256x256 HR crops of real photos and their x4 LR made with area (antialiased) reduction."""
    import skimage.data

    from desra.data.io import imwrite_atomic

    for name, (ys, xs) in PHOTOS.items():
        rgb = getattr(skimage.data, name)()[ys, xs]
        hr = np.ascontiguousarray(rgb[..., ::-1])
        lr = cv2.resize(hr, (hr.shape[1] // 4, hr.shape[0] // 4), interpolation=cv2.INTER_AREA)
        imwrite_atomic(hr, os.path.join(out_dir, 'HR', f'{name}.png'))
        imwrite_atomic(lr, os.path.join(out_dir, 'LR', f'{name}.png'))


def run_test(name: str, weights: str, param_key: str, data: str) -> None:
    """test.py with options/test_realesrgan_x4.yml on the demo photos; prints and saves a PSNR/SSIM table."""
    subprocess.run([sys.executable, 'test.py', '-opt', 'options/test_realesrgan_x4.yml', '--force_yml',
                    f'name={name}', f'path:pretrain_network_g={weights}', f'path:param_key_g={param_key}',
                    f'datasets:test_1:dataroot_gt={data}/HR', f'datasets:test_1:dataroot_lq={data}/LR',
                    'datasets:test_1:name=demo_photos'], check=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--iters', type=int, default=20, help="fine-tuning iterations (default 20)")
    args = parser.parse_args(argv)
    os.chdir(REPO)
    data = os.path.join('results', 'demo', 'data')
    make_photos(data)
    print(f'Demo data: {len(PHOTOS)} real photos (skimage.data) in {data}/HR and their x4 LR in {data}/LR')

    weights = next((w for w in WEIGHT_CANDIDATES if os.path.isfile(w)), None)
    force = [f'train:total_iter={args.iters}', f'val:val_freq={args.iters}',
             f'logger:save_checkpoint_freq={args.iters}']
    if weights:
        print(f'GAN-SR generator: Real-ESRGAN x4plus from {weights}')
        force.append(f'path:pretrain_network_g={weights}')
        print('\n== Real-ESRGAN x4plus on the demo photos (before fine-tuning) ==')
        run_test('demo_before', weights, 'params_ema', data)
    else:
        print('No Real-ESRGAN weights found (looked in: ' + ', '.join(WEIGHT_CANDIDATES) + '); training a small '
              'RRDB from scratch instead. Put RealESRGAN_x4plus.pth in pretrained/ for the real thing.')
        force += ['path:pretrain_network_g=~', 'network_g:num_block=2', 'network_g:num_feat=16',
                  'network_g:num_grow_ch=8', 'network_d:num_feat=16', 'train:optim_g:lr=1e-3']
    print(f'\n== LDL fine-tune: {args.iters} iterations (L1 + LDL artifact loss + GAN, EMA 0.999) ==')
    subprocess.run([sys.executable, 'train.py', '-opt', 'options/demo_ldl_finetune.yml', '--force_yml', *force],
                   check=True)
    exp = os.path.join('experiments', 'demo_ldl_finetune')
    if weights:
        print('\n== After fine-tuning (EMA generator) ==')
        run_test('demo_after', os.path.join(exp, 'models', f'net_g_{args.iters}.pth'), 'params_ema', data)
        print('\nPSNR / SSIM (Y channel, crop 4) on the demo photos:')
        for tag in ('before', 'after'):
            with open(os.path.join('results', f'demo_{tag}', 'metrics.md'), encoding='utf-8') as f:
                row = f.read().strip().splitlines()[-1]
            print(f'  {tag:6s} {row}')
        print('(A few CPU iterations with L1 weight 1.0 mostly pull the GAN output towards the GT; the real '
              'experiments run for thousands of iterations on a GPU.)')
    print('\nDone.')
    print(f'  checkpoints:        {exp}/models/net_g_{args.iters}.pth (params, params_ema)')
    print(f'  validation images:  {exp}/visualization/demo_photos/')
    print(f'  loss log:           {exp}/losses.jsonl   TensorBoard: tensorboard --logdir tb_logger')
    return 0


if __name__ == '__main__':
    sys.exit(main())
