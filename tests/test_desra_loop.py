"""The DeSRA loop end to end on CPU: tiny random generators, synthetic images, every artifact checked."""
import json
import os
import re

import cv2
import numpy as np
import pytest
import torch
import yaml

from conftest import REPO, run_script
from desra.config import load_yaml_file

TINY_NET = {'type': 'RRDBNet', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_block': 1, 'num_grow_ch': 4}


def _ckpt(path, seed):
    from desra.archs.rrdbnet_arch import RRDBNet

    torch.manual_seed(seed)
    torch.save({'params_ema': RRDBNet(3, 3, 4, num_feat=8, num_block=1, num_grow_ch=4).state_dict()}, path)


def test_finetune_desra_yml_has_the_paper_settings(tiny_data, tmp_path):
    opt = load_yaml_file(os.path.join(REPO, 'options', 'finetune_desra.yml'))
    ds = opt['datasets']['train']
    assert (ds['gt_size'], ds['batch_size_per_gpu'], ds['type']) == (256, 12, 'PairedImageDataset')
    assert opt['network_g'] == {'type': 'RRDBNet', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 64, 'num_block': 23,
                                'num_grow_ch': 32}
    assert opt['network_d'] == {'type': 'UNetDiscriminatorSN', 'num_in_ch': 3, 'num_feat': 64, 'skip_connection': True}
    t = opt['train']
    assert t['total_iter'] == 1000 and t['ema_decay'] == 0.999
    for key in ('optim_g', 'optim_d'):
        assert (t[key]['type'], t[key]['lr'], t[key]['betas']) == ('Adam', 1e-4, [0.9, 0.99])
    assert (t['pixel_opt']['type'], t['pixel_opt']['loss_weight']) == ('L1Loss', 1.0)
    assert t['perceptual_opt']['layer_weights'] == {'conv1_2': 0.1, 'conv2_2': 0.1, 'conv3_4': 1, 'conv4_4': 1,
                                                    'conv5_4': 1}
    assert (t['perceptual_opt']['perceptual_weight'], t['perceptual_opt']['criterion']) == (1.0, 'l1')
    assert (t['gan_opt']['gan_type'], t['gan_opt']['loss_weight']) == ('vanilla', 0.1)
    assert opt['logger']['save_checkpoint_iters'] == [1000, 2000, 5000]
    p = opt['path']
    assert p['pretrain_network_g'].endswith('RealESRGAN_x4plus.pth') and p['param_key_g'] == 'params_ema'
    assert p['pretrain_network_d'].endswith('RealESRGAN_x4plus_netD.pth') and p['param_key_d'] == 'params'
    ldl = load_yaml_file(os.path.join(REPO, 'options', 'finetune_desra_ldl.yml'))
    assert ldl['train']['artifacts_opt'] == {'type': 'LDLArtifactLoss', 'loss_weight': 1.0}

    # builds with tiny shapes and trains 2 iterations on tiny data
    opt['network_g'].update(num_feat=8, num_block=1, num_grow_ch=4)
    opt['network_d']['num_feat'] = 8
    opt['path'].update(pretrain_network_g=None, pretrain_network_d=None)
    opt['train']['perceptual_opt']['weights'] = 'random'
    opt['train']['total_iter'] = 2
    ds.update(dataroot_gt=os.path.join(tiny_data, 'HR'), dataroot_lq=os.path.join(tiny_data, 'LR'),
              meta_info_file=None, gt_size=32, batch_size_per_gpu=2, num_worker_per_gpu=0, dataset_enlarge_ratio=1)
    opt['logger'].update(print_freq=1, use_tb_logger=False)
    (tmp_path / 'ft.yml').write_text(yaml.safe_dump(opt))
    out = run_script('train.py', ['-opt', str(tmp_path / 'ft.yml')], tmp_path)
    assert out.returncode == 0, out.stderr
    exp = tmp_path / 'experiments' / opt['name']
    assert os.listdir(exp / 'models') == ['net_d_2.pth', 'net_g_2.pth'] or sorted(os.listdir(exp / 'models')) == [
        'net_d_2.pth', 'net_g_2.pth']
    losses = [json.loads(line) for line in open(exp / 'losses.jsonl')]
    assert [r['iter'] for r in losses] == [1, 2] and 'l_g_percep' in losses[0]


def test_loop_end_to_end(tmp_path):
    rng = np.random.default_rng(0)
    lr_dir, gt_dir, hr_dir = tmp_path / 'LR', tmp_path / 'GT-Mask', tmp_path / 'HR'
    for d in (lr_dir, gt_dir, hr_dir):
        d.mkdir()
    for i in range(4):
        cv2.imwrite(str(lr_dir / f'im{i}.png'), rng.integers(0, 256, (16, 16, 3)).astype(np.uint8))
        cv2.imwrite(str(hr_dir / f'im{i}.png'), rng.integers(0, 256, (64, 64, 3)).astype(np.uint8))
        gt = np.zeros((64, 64), np.uint8)
        gt[10:30, 10:30] = 255
        cv2.imwrite(str(gt_dir / f'im{i}.png'), gt)
    _ckpt(tmp_path / 'mse.pth', 0)
    _ckpt(tmp_path / 'gan.pth', 1)
    opt = {'name': 'loop', 'scale': 4, 'seed': 0,
           'data': {'lr': str(lr_dir), 'gt_masks': str(gt_dir), 'hr': str(hr_dir), 'train_count': 2},
           'mse_model': {'network': TINY_NET, 'path': str(tmp_path / 'mse.pth')},
           'gan_model': {'network': TINY_NET, 'path': str(tmp_path / 'gan.pth')},
           'segmenter': {'type': 'none'}, 'class_weights': None,
           'detector': {'type': 'desra', 'min_area': 0.002},
           'finetune': {'options': os.path.join(REPO, 'options', 'finetune_desra.yml'),
                        'force': {'network_d': {'num_feat': 8}, 'path': {'pretrain_network_d': None},
                                  'datasets': {'train': {'gt_size': 32, 'batch_size_per_gpu': 2,
                                                         'num_worker_per_gpu': 0, 'dataset_enlarge_ratio': 1}},
                                  'train': {'total_iter': 3, 'perceptual_opt': {'weights': 'random'}},
                                  'logger': {'print_freq': 1, 'use_tb_logger': False}}},
           'output': {'root': str(tmp_path / 'report')}}
    (tmp_path / 'loop.yml').write_text(yaml.safe_dump(opt))
    out = run_script('scripts/desra_pipeline.py', ['-opt', str(tmp_path / 'loop.yml')], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    root = tmp_path / 'report'
    split = json.load(open(root / 'pseudo_gt' / 'split.json'))
    assert len(split['train']) == 2 and len(split['val']) == 2
    assert sorted(split['train'] + split['val']) == [f'im{i}' for i in range(4)]
    # detect before: all 4 images; pseudo-GT pairs; fine-tuned model; detect after: the 2 validation images
    assert sorted(os.listdir(root / 'detect_before' / 'masks')) == [f'im{i}.png' for i in range(4)]
    assert sorted(os.listdir(root / 'pseudo_gt' / 'train' / 'GT')) == sorted(f'{n}.png' for n in split['train'])
    assert sorted(os.listdir(root / 'finetune' / 'models')) == ['net_d_3.pth', 'net_g_3.pth']
    assert sorted(os.listdir(root / 'detect_after' / 'masks')) == sorted(f'{n}.png' for n in split['val'])
    # the pseudo-GT really is M * MSE + (1 - M) * GAN of the first detection
    n = split['train'][0]
    m = cv2.imread(str(root / 'detect_before' / 'masks' / f'{n}.png'), cv2.IMREAD_UNCHANGED) > 0
    mse = cv2.imread(str(root / 'detect_before' / 'MSE-SR' / f'{n}.png'))
    gan = cv2.imread(str(root / 'detect_before' / 'GAN-SR' / f'{n}.png'))
    pgt = cv2.imread(str(root / 'pseudo_gt' / 'train' / 'GT' / f'{n}.png'))
    assert np.array_equal(pgt, np.where(m[..., None], mse, gan))
    # the after-images are the fine-tuned EMA generator's outputs
    g = torch.load(root / 'finetune' / 'models' / 'net_g_3.pth', weights_only=True)
    assert set(g) == {'params', 'params_ema'}
    # report
    summary = json.load(open(root / 'summary.json'))['summary']
    for key in ('area_before', 'area_after', 'psnr_outside_mean', 'gt_before', 'gt_after', 'removal_addition',
                'psnr_hr_before', 'psnr_hr_after'):
        assert key in summary
    assert summary['iterations'] == 3 and summary['val_images'] == 2
    table = open(root / 'table3.md').read()
    assert '| detected artifact area (mean fraction of pixels) |' in table
    assert '| removal rate (GT regions with no detection left) |' in table
    assert '| PSNR(old GAN-SR, new GAN-SR) outside the detected regions |' in table
    assert '| Y-PSNR of GAN-SR against the real HR |' in table
    # the PSNR outside the masks is the formula, recomputed here for one validation image
    n = split['val'][0]
    old = cv2.imread(str(root / 'detect_before' / 'GAN-SR' / f'{n}.png')).astype(np.float64)
    new = cv2.imread(str(root / 'detect_after' / 'GAN-SR' / f'{n}.png')).astype(np.float64)
    keep = ~((cv2.imread(str(root / 'detect_before' / 'masks' / f'{n}.png'), 0) > 0)
             | (cv2.imread(str(root / 'detect_after' / 'masks' / f'{n}.png'), 0) > 0))
    rec = {r['name']: r for r in json.load(open(root / 'summary.json'))['per_image']}[n]
    mse = np.mean((old[keep] - new[keep]) ** 2)
    assert rec['psnr_outside'] == pytest.approx(10 * np.log10(255 ** 2 / mse), rel=1e-9)
    srcs = re.findall(r'<img [^>]*src="([^"]+)"', open(root / 'index.html').read())
    assert len(srcs) == 2 * 5
    for rel in srcs:
        assert os.path.isfile(os.path.join(root, rel)), rel
    assert table.strip().splitlines()[0] == '# DeSRA loop: loop'
    assert '# DeSRA loop: loop' in out.stdout


def test_loop_option_errors_name_the_key(tmp_path):
    opt = {'name': 'loop', 'scale': 4, 'data': {'lr': str(tmp_path)},
           'mse_model': {'network': TINY_NET, 'path': 'x.pth'}, 'gan_model': {'network': TINY_NET, 'path': 'y.pth'},
           'detector': {'type': 'desra'}, 'finetune': {}}
    (tmp_path / 'loop.yml').write_text(yaml.safe_dump(opt))
    out = run_script('scripts/desra_pipeline.py', ['-opt', str(tmp_path / 'loop.yml')], tmp_path)
    assert out.returncode == 2 and 'Traceback' not in out.stderr
    assert out.stderr.strip() == 'error: finetune.options: missing required key (expected a string)'
