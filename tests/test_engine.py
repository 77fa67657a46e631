"""Schedulers, EMA, sampler, model construction details and test.py."""
import math
import os

import cv2
import numpy as np
import pytest
import torch
import yaml

from conftest import TINY_GAN_LDL, make_paired_folder, run_script
from desra.config import finalize_options, load_yaml_file
from desra.data.sampler import ResumableSampler
from desra.engine.lr_scheduler import LRSchedule
from desra.errors import ConfigError
from desra.models import build_model
from desra.models.ema import ModelEMA


def _optimizer(lr=1e-4):
    return torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def test_multistep_schedule_matches_hand_values():
    o = _optimizer(1e-4)
    s = LRSchedule(o, {'type': 'MultiStepLR', 'milestones': [3, 5], 'gamma': 0.5})
    lrs = []
    for t in range(1, 8):
        s.update(t)
        lrs.append(s.get_lr()[0])
    assert lrs == pytest.approx([1e-4, 1e-4, 5e-5, 5e-5, 2.5e-5, 2.5e-5, 2.5e-5])


def test_cosine_restart_schedule_and_warmup():
    o = _optimizer(1.0)
    s = LRSchedule(o, {'type': 'CosineAnnealingRestartLR', 'periods': [10, 10], 'restart_weights': [1, 0.5],
                       'eta_min': 0.0})
    got = {}
    for t in (1, 5, 10, 11, 15, 20):
        s.update(t)
        got[t] = s.get_lr()[0]
    assert got[5] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert got[10] == pytest.approx(0.0, abs=1e-12)
    assert got[11] == pytest.approx(0.5 * 0.5 * (1 + math.cos(math.pi * 0.1)))
    assert got[15] == pytest.approx(0.25)
    s.update(2, warmup_iter=4)  # linear warm-up multiplies by t / warmup_iter
    assert s.get_lr()[0] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.2)) * 2 / 4)


@pytest.mark.parametrize('opt, message', [
    ({'type': 'CosineAnealingRestartLR', 'periods': [1]},
     "train.scheduler.type: unknown scheduler 'CosineAnealingRestartLR'. Did you mean 'CosineAnnealingRestartLR'?"),
    ({'type': 'MultiStepLR'}, 'train.scheduler.milestones: missing required key'),
    ({'type': 'MultiStepLR', 'milestones': [1], 'gama': 0.5}, 'train.scheduler.gama: unknown option for MultiStepLR'),
    ({'type': 'CosineAnnealingRestartLR', 'periods': [1, 2], 'restart_weights': [1]},
     'train.scheduler.restart_weights: needs one weight per period (2)'),
])
def test_scheduler_errors(opt, message):
    with pytest.raises(ConfigError) as e:
        LRSchedule(_optimizer(), opt)
    assert str(e.value).startswith(message)


def test_ema_update_formula():
    net = torch.nn.Linear(2, 1)
    ema = ModelEMA(net, 0.9)
    before = ema.module.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update(net)
    assert torch.allclose(ema.module.weight, 0.9 * before + 0.1 * net.weight)
    assert not any(p.requires_grad for p in ema.module.parameters())
    with pytest.raises(ValueError, match=r'train.ema_decay must be in \[0, 1\), got 1.5'):
        ModelEMA(net, 1.5)


def test_sampler_shards_cover_single_process_batches():
    one = list(ResumableSampler(10, 1, 0, shuffle=True, seed=3))
    r0 = list(ResumableSampler(10, 2, 0, shuffle=True, seed=3))
    r1 = list(ResumableSampler(10, 2, 1, shuffle=True, seed=3))
    # global batch t of size 4 (1 process) == union of the two ranks' batch t of size 2, same seeds
    for t in range(2):
        assert sorted(one[4 * t:4 * t + 4]) == sorted(r0[2 * t:2 * t + 2] + r1[2 * t:2 * t + 2])
    s = ResumableSampler(10, 1, 0, shuffle=True, seed=3)
    s.set_epoch(0, start=6)
    assert list(s) == one[6:]
    s.set_epoch(1)
    assert list(s) != one  # a new permutation and new augmentation seeds each epoch


def _tiny_opt(data_root, **train_overrides):
    opt = load_yaml_file(TINY_GAN_LDL)
    opt['is_train'] = True
    for phase in ('train', 'val'):
        opt['datasets'][phase]['dataroot_gt'] = os.path.join(data_root, 'HR')
        opt['datasets'][phase]['dataroot_lq'] = os.path.join(data_root, 'LR')
    opt['train'].update(train_overrides)
    return finalize_options(opt)


def test_ldl_option_file_form_of_artifacts_loss(tiny_data):
    from desra.losses import LDLArtifactLoss

    opt = _tiny_opt(tiny_data, artifacts_opt={'type': 'L1Loss', 'loss_weight': 0.5})
    model = build_model(opt, torch.device('cpu'))
    assert isinstance(model.cri_artifacts, LDLArtifactLoss) and model.cri_artifacts.loss_weight == 0.5
    opt = _tiny_opt(tiny_data, artifacts_opt={'type': 'L1Loss', 'kernel_size': 5})
    with pytest.raises(ConfigError, match=r'^train.artifacts_opt.kernel_size: not an L1Loss option'):
        build_model(opt, torch.device('cpu'))
    opt = _tiny_opt(tiny_data, ema_decay=0)
    with pytest.raises(ConfigError, match=r'^train.ema_decay: the LDL artifact loss'):
        build_model(opt, torch.device('cpu'))


def test_gan_step_updates_g_d_and_ema(tiny_data):
    opt = _tiny_opt(tiny_data)
    model = build_model(opt, torch.device('cpu'))
    g0 = {k: v.clone() for k, v in model.net_g.state_dict().items()}
    d0 = {k: v.clone() for k, v in model.net_d.state_dict().items()}
    e0 = {k: v.clone() for k, v in model.ema.module.state_dict().items()}
    batch = {'lq': torch.rand(2, 3, 8, 8), 'gt': torch.rand(2, 3, 32, 32)}
    model.feed_data(batch)
    losses = model.optimize_parameters(1)
    assert set(losses) == {'l_g_pix', 'l_g_artifacts', 'l_g_gan', 'l_d_real', 'l_d_fake', 'out_d_real', 'out_d_fake'}
    g1, d1, e1 = model.net_g.state_dict(), model.net_d.state_dict(), model.ema.module.state_dict()
    k = 'conv_first.weight'
    assert not torch.equal(g0[k], g1[k]) and not torch.equal(d0['conv0.weight'], d1['conv0.weight'])
    # EMA: e1 = 0.999 e0 + 0.001 g1
    assert torch.allclose(e1[k], 0.999 * e0[k] + 0.001 * g1[k], atol=1e-7)
    assert all(p.requires_grad for p in model.net_d.parameters())


def test_gan_model_waits_net_d_init_iters(tiny_data):
    opt = _tiny_opt(tiny_data, net_d_init_iters=5)
    model = build_model(opt, torch.device('cpu'))
    g0 = model.net_g.state_dict()['conv_first.weight'].clone()
    model.feed_data({'lq': torch.rand(2, 3, 8, 8), 'gt': torch.rand(2, 3, 32, 32)})
    losses = model.optimize_parameters(3)
    assert 'l_g_gan' not in losses and 'l_d_real' in losses
    assert torch.equal(model.net_g.state_dict()['conv_first.weight'], g0)


def test_amp_flag_is_ignored_on_cpu_with_warning(tiny_data, caplog):
    opt = _tiny_opt(tiny_data, use_amp=True, amp_dtype='bf16')
    model = build_model(opt, torch.device('cpu'))
    assert model.amp_dtype is None
    assert 'train.use_amp is ignored on cpu' in caplog.text
    with pytest.raises(ConfigError, match=r"^train.amp_dtype: expected bf16 or fp16, got 'fp8'"):
        build_model(_tiny_opt(tiny_data, use_amp=True, amp_dtype='fp8'), torch.device('cpu'))


def test_test_py_saves_images_and_prints_table(tmp_path):
    data = make_paired_folder(str(tmp_path / 'data'), n=3, lq_size=10)
    from desra.archs.rrdbnet_arch import RRDBNet

    net = RRDBNet(3, 3, 4, num_feat=8, num_block=1, num_grow_ch=4)
    torch.save({'params_ema': net.state_dict()}, tmp_path / 'net.pth')
    opt = {'name': 'tiny_test', 'model_type': 'SRModel', 'scale': 4,
           'datasets': {'test_1': {'name': 'paired', 'type': 'PairedImageDataset',
                                   'dataroot_gt': os.path.join(data, 'HR'), 'dataroot_lq': os.path.join(data, 'LR')},
                        'test_2': {'name': 'lronly', 'type': 'SingleImageDataset',
                                   'dataroot_lq': os.path.join(data, 'LR')}},
           'network_g': {'type': 'RRDBNet', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_block': 1,
                         'num_grow_ch': 4},
           'path': {'pretrain_network_g': str(tmp_path / 'net.pth'), 'param_key_g': 'params_ema'},
           'val': {'save_img': True, 'tile_size': 4, 'tile_pad': 4,
                   'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 4, 'test_y_channel': True}}}}
    (tmp_path / 'test.yml').write_text(yaml.safe_dump(opt))
    out = run_script('test.py', ['-opt', str(tmp_path / 'test.yml')], tmp_path)
    assert out.returncode == 0, out.stderr
    vis = tmp_path / 'results' / 'tiny_test' / 'visualization'
    assert sorted(os.listdir(vis / 'paired')) == [f'{i:04d}_tiny_test.png' for i in range(3)]
    assert sorted(os.listdir(vis / 'lronly')) == [f'{i:04d}_tiny_test.png' for i in range(3)]
    # the table's PSNR equals a PSNR recomputed here from the saved images (Y channel, crop 4, MATLAB style)
    vals = []
    for i in range(3):
        sr = cv2.imread(str(vis / 'paired' / f'{i:04d}_tiny_test.png')).astype(np.float64)
        gt = cv2.imread(os.path.join(data, 'HR', f'{i:04d}.png')).astype(np.float64)
        y = lambda im: (24.966 * im[..., 0] + 128.553 * im[..., 1] + 65.481 * im[..., 2]) / 255 + 16  # noqa: E731
        mse = np.mean((y(sr)[4:-4, 4:-4] - y(gt)[4:-4, 4:-4]) ** 2)
        vals.append(10 * np.log10(255 ** 2 / mse))
    lines = out.stdout.strip().splitlines()
    table = lines[max(i for i, line in enumerate(lines) if line.startswith('| dataset')):]
    assert table[0] == '| dataset | images | psnr (↑) |'
    assert table[2].startswith('| paired | 3 | ') and table[3] == '| lronly | 3 |  |'
    assert float(table[2].split('|')[3]) == pytest.approx(np.mean(vals), abs=1e-4)
