"""Real-world training: the on-the-fly degradation in a model, exact resume with the training-pair pool, USM
targets, the Real-ESRGAN data sets and LMDB, compatibility archs, the contact sheet, and bad input."""
import json
import os
import re
import signal
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
import yaml

from conftest import KILLER_PLUGIN, REPO, cli_env, cli_main, read_losses, user_error_in_process
from desra.config import load_yaml_file

TINY_REAL = os.path.join(REPO, 'options', 'tiny', 'realesrgan.yml')


@pytest.fixture(scope='module')
def gt_data(tmp_path_factory):
    root = tmp_path_factory.mktemp('gt_data')
    (root / 'HR').mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        base = rng.integers(0, 256, (20, 20, 3)).astype(np.uint8)
        cv2.imwrite(str(root / 'HR' / f'{i:04d}.png'), cv2.resize(base, (80, 80), interpolation=cv2.INTER_CUBIC))
    (root / 'meta_info.txt').write_text(''.join(f'{i:04d}.png\n' for i in range(6)))
    return root


def real_args(gt_data, *extra):
    return ['-opt', TINY_REAL, '--force_yml', f'datasets:train:dataroot_gt={gt_data / "HR"}',
            f'datasets:train:meta_info={gt_data / "meta_info.txt"}', *extra]


def run_train(cwd, args, env=None):
    return subprocess.run([sys.executable, os.path.join(REPO, 'train.py'), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env=env or cli_env())


def test_sigkill_and_resume_reproduce_the_degraded_run_bitwise(tmp_path, gt_data):
    ref_dir, run_dir, plugin = tmp_path / 'ref', tmp_path / 'run', tmp_path / 'plugin'
    for d in (ref_dir, run_dir, plugin):
        d.mkdir()
    (plugin / 'killer_plugin.py').write_text(KILLER_PLUGIN)
    args = real_args(gt_data, 'train:total_iter=8', 'logger:save_checkpoint_freq=3')
    ref = run_train(ref_dir, args)
    assert ref.returncode == 0, ref.stderr
    ref_losses = read_losses(ref_dir / 'experiments' / 'tiny_realesrgan')
    assert sorted(ref_losses) == list(range(1, 9))
    env = cli_env(str(plugin))
    env['DESRA_TEST_KILL_AT'] = '5'
    killed = run_train(run_dir, args + ['import_modules=[killer_plugin]'], env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    exp = run_dir / 'experiments' / 'tiny_realesrgan'
    state = torch.load(exp / 'training_states' / '3.state', weights_only=True)
    pool = state['rank_states'][0]['pool']
    assert pool['ptr'] == 4 and pool['lq']['uint8'].shape == (4, 3, 8, 8) and pool['gt']['uint8'].dtype == torch.uint8
    resumed = run_train(run_dir, args + ['--auto_resume'])
    assert resumed.returncode == 0, resumed.stderr
    assert 'Resumed from' in resumed.stdout and 'iteration 3' in resumed.stdout
    after = read_losses(exp)
    for it in range(1, 9):
        assert after[it] == ref_losses[it], f'iteration {it}: {after[it]} != {ref_losses[it]}'


@pytest.mark.parametrize('override, message', [
    ("datasets:train:kernel_list=['iso', 'gauss']",
     "datasets.train.kernel_list[1]: unknown kernel type 'gauss'. Expected one of iso, aniso, generalized_iso, "
     "generalized_aniso, plateau_iso, plateau_aniso"),
    ('datasets:train:kernel_prob=[0.5, 0.25, 0.12, 0.03, 0.12, 0.03]',
     'datasets.train.kernel_prob: the probabilities sum to 1.05, expected 1'),
    ('datasets:train:kernel_prob2=[0.5, 0.5]',
     'datasets.train.kernel_prob2: 2 probabilities for the 6 kernel types of kernel_list2; give one per type'),
    ('datasets:train:blur_kernel_size=20',
     'datasets.train.blur_kernel_size: expected an odd kernel size >= 7 (Real-ESRGAN: 21), got 20'),
    ('resize_prob=[0.5, 0.5, 0.5]', 'resize_prob: the probabilities sum to 1.5, expected 1'),
    ('queue_size=5', 'queue_size: 5 is not a multiple of datasets.train.batch_size_per_gpu 2 (Real-ESRGAN: 180 with '
                     'batch 12)'),
])
def test_bad_degradation_options(tmp_path, gt_data, override, message, monkeypatch):
    msg = user_error_in_process(cli_main('train.py'), real_args(gt_data, override), tmp_path, monkeypatch)
    assert msg == message
    assert not (tmp_path / 'experiments').exists()


def test_paired_data_with_the_degradation_on_is_refused(tmp_path, tiny_data, monkeypatch):
    opt = load_yaml_file(TINY_REAL)
    kernel_keys = ('blur', 'kernel', 'sinc', 'betag', 'betap', 'final', 'crop')
    opt['datasets']['train'] = {k: v for k, v in opt['datasets']['train'].items() if not k.startswith(kernel_keys)}
    opt['datasets']['train'].update(type='PairedImageDataset', dataroot_gt=f'{tiny_data}/HR',
                                    dataroot_lq=f'{tiny_data}/LR', meta_info=None)
    path = tmp_path / 'paired.yml'
    path.write_text(yaml.safe_dump(opt))
    msg = user_error_in_process(cli_main('train.py'), ['-opt', str(path)], tmp_path, monkeypatch)
    assert msg.startswith('high_order_degradation: true needs GT images with blur kernels (datasets.train.type: '
                          'RealESRGANDataset), got PairedImageDataset')


def test_meta_info_line_naming_a_missing_file(tmp_path, gt_data, monkeypatch):
    meta = tmp_path / 'meta.txt'
    meta.write_text('0000.png\n0001.png\nmissing.png\n')
    msg = user_error_in_process(cli_main('train.py'), real_args(gt_data, f'datasets:train:meta_info={meta}'),
                                tmp_path, monkeypatch)
    assert msg == f'datasets.train.meta_info: line 3 of {meta} names missing.png, which does not exist in ' \
                  f'{gt_data / "HR"}'


def test_contact_sheet_is_written_and_every_image_exists(tmp_path, gt_data):
    out = tmp_path / 'sheet'
    info = cli_main('scripts/show_degradations.py')(real_args(gt_data)[:2] + ['--n', '5', '--out', str(out),
                                                                              '--force_yml'] + real_args(gt_data)[3:])
    assert len(info['pairs']) == 5
    html = (out / 'index.html').read_text()
    srcs = re.findall(r'<img src="([^"]+)"', html)
    assert len(srcs) == 10
    for src in srcs:
        assert (out / src).is_file(), src
    sheet = cv2.imread(str(out / 'contact_sheet.png'))
    assert sheet is not None and sheet.shape[0] > 100
    params = json.load(open(out / 'params.json'))['pairs']
    assert all(p['lines'][0].startswith('1: blur ') and 'jpeg q' in p['lines'][1] for p in params)
    gt = cv2.imread(str(out / params[0]['gt']))
    lq = cv2.imread(str(out / params[0]['lq']))
    assert gt.shape == (32, 32, 3) and lq.shape == (8, 8, 3)


# ----------------------------------------------------------------------------------------------- parts
def test_training_pair_pool():
    from desra.data.degradations.pipeline import TrainingPairPool

    pool = TrainingPairPool(4)
    batches = [(torch.full((2, 3, 2, 2), v / 255.), torch.full((2, 3, 8, 8), v / 255.)) for v in range(1, 5)]
    out1 = pool(*batches[0])
    out2 = pool(*batches[1])
    assert torch.equal(out1[0], batches[0][0]) and torch.equal(out2[0], batches[1][0])  # filling: passed through
    state = pool.state_dict()
    assert state['ptr'] == 4 and set(state['lq']) == {'uint8'}
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    out3 = pool(*batches[2], generator=g1)
    values = sorted(out3[0][:, 0, 0, 0].mul(255).round().tolist())
    assert all(v in (1, 2) for v in values)  # two of the pooled pairs came out, the new batch went in
    assert torch.equal(out3[0][:, 0, 0, 0], out3[1][:, 0, 0, 0])  # LQ and GT stay paired
    restored = TrainingPairPool(4)
    restored.load_state_dict(state, 'cpu')
    again = restored(*batches[2], generator=g2)
    assert torch.equal(again[0], out3[0]) and torch.equal(again[1], out3[1])  # the saved pool resumes exactly


def test_iteration_draws_depend_only_on_seed_iteration_rank():
    from desra.data.degradations.pipeline import iteration_generators

    a, b = iteration_generators(0, 5, 0, 'cpu'), iteration_generators(0, 5, 0, 'cpu')
    assert a.uniform() == b.uniform()
    assert torch.equal(torch.rand(3, generator=a.torch), torch.rand(3, generator=b.torch))
    assert iteration_generators(0, 6, 0, 'cpu').uniform() != iteration_generators(0, 5, 0, 'cpu').uniform()
    assert iteration_generators(0, 5, 1, 'cpu').uniform() != iteration_generators(0, 5, 0, 'cpu').uniform()


def test_usm_targets_follow_the_switches(tiny_data):
    from desra.config import finalize_options
    from desra.data.degradations import USMSharp
    from desra.models import build_model

    opt = load_yaml_file(os.path.join(REPO, 'tests', 'data', 'published', 'finetune_realesrgan_x4plus_pairdata.yml'))
    opt['network_g'].update(num_feat=8, num_block=1, num_grow_ch=4)
    opt['network_d']['num_feat'] = 8
    opt['path'].update(pretrain_network_g=None, pretrain_network_d=None)
    opt['train']['perceptual_opt']['weights'] = 'random'
    opt['is_train'] = True
    finalize_options(opt)
    model = build_model(opt, torch.device('cpu'))
    assert model.synthesis is None and model.usm_for == {'l1': True, 'percep': True, 'gan': False}
    gt = torch.rand(1, 3, 32, 32)
    model.feed_data({'lq': torch.rand(1, 3, 8, 8), 'gt': gt})
    usm = USMSharp()(gt)
    assert torch.equal(model.targets['l1'], usm) and torch.equal(model.targets['percep'], usm)
    assert torch.equal(model.targets['gan'], gt)
    losses = model.optimize_parameters(1)
    with torch.no_grad():
        expected = torch.nn.functional.l1_loss(model.output, usm)
    assert abs(float(losses['l_g_pix']) - float(expected)) < 1e-6


def test_ldl_opt_is_the_artifact_loss_logged_as_l_g_ldl(tmp_path, gt_data, monkeypatch):
    args = real_args(gt_data, 'train:ldl_opt={type: L1Loss, loss_weight: 1.0, reduction: mean}', 'train:total_iter=1')
    monkeypatch.chdir(tmp_path)
    cli_main('train.py')(args)
    losses = read_losses(tmp_path / 'experiments' / 'tiny_realesrgan')
    assert 'l_g_ldl' in losses[1] and 'l_g_artifacts' not in losses[1]
    msg = user_error_in_process(cli_main('train.py'), args + ['train:artifacts_opt={type: L1Loss, loss_weight: 1}'],
                                tmp_path, monkeypatch)
    assert msg == 'train.ldl_opt: the same LDL artifact loss as train.artifacts_opt; give only one'


def test_realesrgan_paired_meta_lines_and_lmdb_equal_disk(tmp_path, tiny_data):
    from desra.data.realesrgan_dataset import RealESRGANPairedDataset

    root = tmp_path / 'root'
    root.mkdir()
    os.symlink(os.path.join(tiny_data, 'HR'), root / 'gt')
    os.symlink(os.path.join(tiny_data, 'LR'), root / 'lq')
    names = sorted(os.listdir(os.path.join(tiny_data, 'HR')))
    (tmp_path / 'meta.txt').write_text(''.join(f'gt/{n}, lq/{n}\n' for n in names))
    base = {'phase': 'val', 'scale': 4, 'io_backend': {'type': 'disk'}}
    ds = RealESRGANPairedDataset({**base, 'dataroot_gt': str(root), 'dataroot_lq': str(root),
                                  'meta_info': str(tmp_path / 'meta.txt')})
    assert [os.path.basename(p['gt_path']) for p in ds.paths] == names
    assert ds.paths[0]['lq_path'].endswith(os.path.join('lq', names[0]))
    create = cli_main('scripts/create_lmdb.py')
    create(['--input', os.path.join(tiny_data, 'HR'), '--output', str(tmp_path / 'HR.lmdb')])
    create(['--input', os.path.join(tiny_data, 'LR'), '--output', str(tmp_path / 'LR.lmdb')])
    meta = (tmp_path / 'HR.lmdb' / 'meta_info.txt').read_text().splitlines()
    assert meta[0] == f'{names[0][:-4]}.png (48,48,3) 1'
    lmdb_ds = RealESRGANPairedDataset({**base, 'dataroot_gt': str(tmp_path / 'HR.lmdb'),
                                       'dataroot_lq': str(tmp_path / 'LR.lmdb'), 'io_backend': {'type': 'lmdb'}})
    for i in range(len(names)):
        a, b = ds[i], lmdb_ds[i]
        assert torch.equal(a['gt'], b['gt']) and torch.equal(a['lq'], b['lq'])


def test_lmdb_key_not_in_meta_info_and_lmdb_missing(tmp_path, tiny_data, monkeypatch):
    from desra.data.paired_image_dataset import PairedImageDataset
    from desra.errors import ConfigError, DataError

    create = cli_main('scripts/create_lmdb.py')
    for sub in ('HR', 'LR'):
        create(['--input', os.path.join(tiny_data, sub), '--output', str(tmp_path / f'{sub}.lmdb')])
    meta = tmp_path / 'HR.lmdb' / 'meta_info.txt'
    lines = meta.read_text().splitlines()
    meta.write_text('\n'.join(lines[1:]) + '\n')  # the database holds a key the listing lacks
    opt = {'phase': 'train', 'scale': 4, 'gt_size': 32, 'io_backend': {'type': 'lmdb'},
           'dataroot_gt': str(tmp_path / 'HR.lmdb'), 'dataroot_lq': str(tmp_path / 'LR.lmdb'),
           'key_path': 'datasets.train'}
    key = lines[0].split('.png')[0]
    with pytest.raises(DataError) as e:
        PairedImageDataset(opt)
    assert str(e.value) == (f"datasets.train.dataroot_gt: key '{key}' is in the database {tmp_path / 'HR.lmdb'} but "
                            f"not in its meta_info.txt (1 such key(s)): the listing is out of date; rebuild it with "
                            f"scripts/create_lmdb.py")
    meta.write_text('\n'.join(lines + ['nothere.png (48,48,3) 1']) + '\n')
    with pytest.raises(DataError, match=r"key 'nothere' is listed in .*meta_info.txt but is not in the database"):
        PairedImageDataset(opt)
    monkeypatch.setitem(sys.modules, 'lmdb', None)  # as if the package were not installed
    with pytest.raises(ConfigError) as e:
        PairedImageDataset(opt)
    assert str(e.value) == ("datasets.train.io_backend.type: lmdb needs the 'lmdb' package, which is not installed; "
                            "run `pip install lmdb` (or pip install -e \".[lmdb]\"), or use io_backend: {type: disk}")


def test_msrresnet_keys_and_forward_against_a_reference():
    import torch.nn.functional as F

    from desra.archs.srresnet_arch import MSRResNet

    torch.manual_seed(0)
    net = MSRResNet(3, 3, num_feat=8, num_block=2, upscale=4).eval()
    sd = net.state_dict()
    expected = ['conv_first.weight', 'conv_first.bias'] + [f'body.{i}.conv{j}.{p}' for i in range(2) for j in (1, 2)
                                                           for p in ('weight', 'bias')] + [
        f'{n}.{p}' for n in ('upconv1', 'upconv2', 'conv_hr', 'conv_last') for p in ('weight', 'bias')]
    assert list(sd) == expected
    assert sd['upconv1.weight'].shape == (32, 8, 3, 3) and sd['conv_last.weight'].shape == (3, 8, 3, 3)
    x = torch.rand(1, 3, 6, 7)

    def conv(t, name):
        return F.conv2d(t, sd[f'{name}.weight'], sd[f'{name}.bias'], padding=1)

    def lrelu(t):
        return F.leaky_relu(t, 0.1)

    feat = lrelu(conv(x, 'conv_first'))
    out = feat
    for i in range(2):
        out = out + conv(F.relu(conv(out, f'body.{i}.conv1')), f'body.{i}.conv2')
    out = lrelu(F.pixel_shuffle(conv(out, 'upconv1'), 2))
    out = lrelu(F.pixel_shuffle(conv(out, 'upconv2'), 2))
    ref = conv(lrelu(conv(out, 'conv_hr')), 'conv_last') + F.interpolate(x, scale_factor=4, mode='bilinear',
                                                                         align_corners=False)
    with torch.no_grad():
        torch.testing.assert_close(net(x), ref)
    # an official-layout checkpoint loads strictly, x2 and x3 too
    from desra.archs.checkpoint_io import load_network_weights

    assert load_network_weights(MSRResNet(3, 3, 8, 2, 4), {'params': sd}, 'params') == ([], [])
    assert 'upconv2.weight' not in MSRResNet(3, 3, 8, 1, 3).state_dict()


def test_vgg_discriminator_names_of_ldl():
    from desra.archs.discriminator_arch import VGGStyleDiscriminator, VGGStyleDiscriminator128, VGGStyleDiscriminator256

    a, b = VGGStyleDiscriminator128(3, 8), VGGStyleDiscriminator(3, 8, input_size=128)
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}
    c = VGGStyleDiscriminator256(3, 8)
    assert 'conv5_0.weight' in c.state_dict() and c(torch.rand(1, 3, 256, 256)).shape == (1, 1)


def test_degradation_runs_on_the_training_device_and_is_reproducible(gt_data):
    from desra.data.degradations.pipeline import SyntheticPairs
    from desra.data.realesrgan_dataset import RealESRGANDataset

    opt = load_yaml_file(TINY_REAL)
    ds_opt = {**opt['datasets']['train'], 'dataroot_gt': str(gt_data / 'HR'),
              'meta_info': str(gt_data / 'meta_info.txt'),
              'phase': 'train', 'scale': 4}
    ds = RealESRGANDataset(ds_opt)
    items = [ds[(i, 100 + i)] for i in range(2)]
    assert torch.equal(items[0]['kernel1'], ds[(0, 100)]['kernel1'])  # a sample is a function of its seed
    assert items[0]['gt'].shape == (3, 64, 64) and items[0]['kernel1'].shape == (21, 21)
    assert abs(float(items[0]['kernel1'].sum()) - 1) < 1e-5 and abs(float(items[0]['sinc_kernel'].sum()) - 1) < 1e-5
    batch = torch.utils.data.default_collate(items)
    synth = SyntheticPairs({**opt, 'manual_seed': 0}, torch.device('cpu'))
    record = {}
    lq, gt = synth(batch, iteration=1, record=record, use_pool=False)
    assert lq.shape == (2, 3, 8, 8) and gt.shape == (2, 3, 32, 32)
    assert torch.equal(torch.round(lq * 255) / 255, lq) and lq.min() >= 0 and lq.max() <= 1  # 8-bit LQ
    assert set(record) >= {'resize', 'noise', 'jpeg', 'blur2', 'resize2', 'noise2', 'jpeg2', 'final'}
    lq2, gt2 = SyntheticPairs({**opt, 'manual_seed': 0}, torch.device('cpu'))(batch, iteration=1, use_pool=False)
    assert torch.equal(lq, lq2) and torch.equal(gt, gt2)


def test_tiny_realesrnet_trains_on_sharpened_degraded_pairs(tmp_path, gt_data, monkeypatch):
    args = ['-opt', os.path.join(REPO, 'options', 'tiny', 'realesrnet.yml'), '--force_yml',
            f'datasets:train:dataroot_gt={gt_data / "HR"}', f'datasets:train:meta_info={gt_data / "meta_info.txt"}',
            'train:total_iter=3']
    monkeypatch.chdir(tmp_path)
    assert cli_main('train.py')(args)['iter'] == 3
    exp = tmp_path / 'experiments' / 'tiny_realesrnet'
    losses = read_losses(exp)
    assert sorted(losses) == [1, 2, 3] and set(losses[1]) == {'l_pix'}
    state = torch.load(exp / 'training_states' / '3.state', weights_only=True)
    assert state['rank_states'][0]['pool']['ptr'] == 4
