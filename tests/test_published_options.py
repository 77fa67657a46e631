"""The published option files (tests/data/published: Real-ESRGAN, LDL, BasicSR) train for two iterations after
changing only their paths and sizes."""
import glob
import json
import os

import cv2
import numpy as np
import pytest
import torch
import yaml

from conftest import REPO, cli_main
from desra.config import load_yaml_file

PUBLISHED = os.path.join(REPO, 'tests', 'data', 'published')
FILES = sorted(os.path.basename(p) for p in glob.glob(os.path.join(PUBLISHED, '*.yml')))


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    """Tiny data in every layout the files use: paired folders, Real-ESRGAN meta files, LMDB, a val set."""
    root = tmp_path_factory.mktemp('published_data')
    rng = np.random.default_rng(0)
    for sub in ('HR', 'LR'):
        (root / sub).mkdir()
    for i in range(4):
        base = rng.integers(0, 256, (16, 16, 3)).astype(np.uint8)
        hr = cv2.resize(base, (128, 128), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(root / 'HR' / f'{i:04d}.png'), hr)
        cv2.imwrite(str(root / 'LR' / f'{i:04d}.png'), cv2.resize(hr, (32, 32), interpolation=cv2.INTER_AREA))
    (root / 'meta_gt.txt').write_text(''.join(f'HR/{i:04d}.png\n' for i in range(4)))
    (root / 'meta_pair.txt').write_text(''.join(f'HR/{i:04d}.png, LR/{i:04d}.png\n' for i in range(4)))
    (root / 'meta_basicsr.txt').write_text(''.join(f'{i:04d}.png (128,128,3)\n' for i in range(4)))
    create_lmdb = cli_main('scripts/create_lmdb.py')
    create_lmdb(['--input', str(root / 'HR'), '--output', str(root / 'HR.lmdb')])
    create_lmdb(['--input', str(root / 'LR'), '--output', str(root / 'LR.lmdb')])
    from desra.archs.discriminator_arch import UNetDiscriminatorSN
    from desra.archs.rrdbnet_arch import RRDBNet
    from desra.archs.srresnet_arch import MSRResNet

    torch.manual_seed(0)
    torch.save({'params_ema': RRDBNet(3, 3, 4, num_feat=8, num_block=1, num_grow_ch=4).state_dict()},
               root / 'g.pth')
    torch.save({'params': MSRResNet(3, 3, num_feat=8, num_block=1, upscale=4).state_dict()}, root / 'msrresnet.pth')
    torch.save({'params': UNetDiscriminatorSN(3, num_feat=8, skip_connection=True).state_dict()}, root / 'd.pth')
    return root


def shrink(opt: dict, data) -> dict:
    """Only paths and sizes change: data roots and meta files, checkpoints, network widths and depths, patch and
    batch sizes, workers, the pool, iterations and logging intervals (and the VGG weights' location)."""
    for key, ds in opt['datasets'].items():
        kind = ds['type']
        if kind == 'RealESRGANDataset':
            ds.update(dataroot_gt=str(data), meta_info=str(data / 'meta_gt.txt'), gt_size=32, crop_pad_size=64)
        elif kind == 'RealESRGANPairedDataset':
            ds.update(dataroot_gt=str(data), dataroot_lq=str(data), meta_info=str(data / 'meta_pair.txt'), gt_size=32)
        elif kind == 'SingleImageDataset':
            ds.update(dataroot_lq=str(data / 'LR'))
        elif ds.get('io_backend', {}).get('type') == 'lmdb':
            ds.update(dataroot_gt=str(data / 'HR.lmdb'), dataroot_lq=str(data / 'LR.lmdb'))
        else:
            ds.update(dataroot_gt=str(data / 'HR'), dataroot_lq=str(data / 'LR'))
            if ds.get('meta_info_file'):
                ds['meta_info_file'] = str(data / 'meta_basicsr.txt')
        if key == 'train':
            if 'gt_size' in ds and ds['gt_size'] != 128 or opt['network_d' if 'network_d' in opt else 'network_g'][
                    'type'] not in ('VGGStyleDiscriminator', 'VGGStyleDiscriminator128'):
                ds['gt_size'] = min(ds.get('gt_size', 32), 32)
            ds.update(batch_size_per_gpu=2, num_worker_per_gpu=0, dataset_enlarge_ratio=1)
    if 'gt_size' in opt:
        opt.update(gt_size=32, queue_size=4)
    g = opt['network_g']
    g.update(num_feat=8, num_block=1)
    if g['type'] == 'RRDBNet':
        g['num_grow_ch'] = 4
    if 'network_d' in opt:
        opt['network_d']['num_feat'] = 8
    path = opt.setdefault('path', {})
    for k in ('pretrain_network_g', 'pretrain_model_g'):
        if path.get(k):
            path[k] = str(data / ('msrresnet.pth' if g['type'] == 'MSRResNet' else 'g.pth'))
    if path.get('pretrain_network_d'):
        path['pretrain_network_d'] = str(data / 'd.pth')
    if 'perceptual_opt' in opt['train']:
        opt['train']['perceptual_opt']['weights'] = 'random'  # where the VGG19 weights come from; none offline
    opt['train']['total_iter'] = 2
    opt.setdefault('logger', {}).update(print_freq=1, save_checkpoint_freq=2)
    if 'val' in opt:
        opt['val']['val_freq'] = 2
    return opt


@pytest.mark.parametrize('name', FILES)
def test_published_file_trains_two_iterations(name, data, tmp_path, monkeypatch):
    original = load_yaml_file(os.path.join(PUBLISHED, name))
    opt = shrink(load_yaml_file(os.path.join(PUBLISHED, name)), data)
    assert opt['model_type'] == original['model_type']
    assert opt['datasets']['train']['type'] == original['datasets']['train']['type']
    (tmp_path / name).write_text(yaml.safe_dump(opt))
    monkeypatch.chdir(tmp_path)
    result = cli_main('train.py')(['-opt', str(tmp_path / name)])
    assert result['iter'] == 2
    exp = tmp_path / 'experiments' / original['name']
    losses = [json.loads(line) for line in open(exp / 'losses.jsonl')]
    assert [r['iter'] for r in losses] == [1, 2]
    assert all(np.isfinite(v) for r in losses for k, v in r.items() if k != 'iter')
    expected = {'l_g_pix'} if 'network_d' in original else {'l_pix'}
    if 'perceptual_opt' in original['train']:
        expected.add('l_g_percep')
    if original['train'].get('artifacts_opt'):
        expected.add('l_g_artifacts')
    assert expected <= set(losses[0]), losses[0]
    g = torch.load(exp / 'models' / 'net_g_2.pth', weights_only=True)
    assert 'params' in g
