"""LDL Table 1 reproduction (scripts/reproduce_ldl_table.py) on a synthetic benchmark layout, and the perceptual
metrics in a tiny training run's validation (TensorBoard scalars, best tracking, a missing file found up front)."""
import os
import re

import cv2
import numpy as np
import pytest
import torch

from conftest import TINY_GAN_LDL, cli_main, data_overrides, run_script, tree_snapshot, user_error_in_process
from desra.archs.inception_arch import FIDInceptionV3
from desra.archs.rrdbnet_arch import RRDBNet
from desra.metrics import calculate_dists, calculate_lpips, calculate_psnr, calculate_ssim
from desra.pipelines.ldl_table import PAPER_TABLE1

SCRIPT = 'scripts/reproduce_ldl_table.py'
TINY_NET = '{type: RRDBNet, num_in_ch: 3, num_out_ch: 3, num_feat: 8, num_block: 1, num_grow_ch: 4, scale: 4}'


@pytest.fixture(scope='module')
def bench(tmp_path_factory):
    """datasets/Set5 (3 images) and datasets/Set14 (2) in BasicSR's GTmod12 / LRbicx4 layout, and a tiny RRDB."""
    root = tmp_path_factory.mktemp('bench')
    rng = np.random.default_rng(0)
    for name, n in (('Set5', 3), ('Set14', 2)):
        os.makedirs(root / 'datasets' / name / 'GTmod12')
        os.makedirs(root / 'datasets' / name / 'LRbicx4')
        for i in range(n):
            base = rng.integers(0, 256, (12, 12, 3)).astype(np.uint8)
            gt = cv2.resize(base, (48, 48), interpolation=cv2.INTER_CUBIC)
            cv2.imwrite(str(root / 'datasets' / name / 'GTmod12' / f'img{i}.png'), gt)
            cv2.imwrite(str(root / 'datasets' / name / 'LRbicx4' / f'img{i}.png'),
                        cv2.resize(gt, (12, 12), interpolation=cv2.INTER_AREA))
    torch.manual_seed(0)
    net = RRDBNet(3, 3, scale=4, num_feat=8, num_block=1, num_grow_ch=4)
    torch.save({'params_ema': net.state_dict()}, root / 'tiny_rrdb.pth')
    inception = root / 'inception.pth'
    torch.save(FIDInceptionV3().state_dict(), inception)
    return root, inception


def _weights_args(files, inception):
    return ['--alexnet', str(files['alex']), '--vgg16', str(files['vgg']), '--lpips-heads', str(files['heads_alex']),
            '--dists-weights', str(files['dists']), '--fid-inception', str(inception)]


def _cell(report, metric, bench_name, column):
    """The value in ``column`` (0-based after the benchmark name) of ``bench_name``'s row in ``metric``'s table."""
    section = report.split(f'## {metric} ')[1].split('## ')[0]
    row = next(line for line in section.splitlines() if line.startswith(f'| {bench_name} |'))
    return row.strip('|').split('|')[column + 1].strip()


def test_reproduce_ldl_table_prints_paper_beside_ours(bench, perceptual_files, tmp_path, monkeypatch, capsys):
    root, inception = bench
    monkeypatch.chdir(tmp_path)
    out = tmp_path / 'report'
    with pytest.warns(UserWarning, match='FID from 3 samples'):
        result = cli_main(SCRIPT)(['--models', f'RRDB+LDL (DF2K)={root / "tiny_rrdb.pth"}', '--benchmarks',
                                   str(root / 'datasets'), '--network-g', TINY_NET, '--out', str(out),
                                   '--device', 'cpu', '--fid-method', 'eigh',
                                   *_weights_args(perceptual_files, inception)])
    printed = capsys.readouterr().out
    report = (out / 'ldl_table1.md').read_text()
    assert report in printed
    assert result['settings']['benchmarks'] == ['Set5', 'Set14']  # the others are not in the layout: skipped
    # the paper's figures beside ours, with the difference
    for metric, dec in (('LPIPS', 4), ('DISTS', 4), ('FID', 3), ('PSNR', 3), ('SSIM', 4)):
        for b in ('Set5', 'Set14'):
            paper = PAPER_TABLE1[metric][b]['RRDB+LDL (DF2K)']
            assert _cell(report, metric, b, 2) == f'{paper:.{dec}f}'
            ours = result['models']['RRDB+LDL (DF2K)']['results'][b][metric]
            assert _cell(report, metric, b, 1) == f'{ours:.{dec}f}'
            assert _cell(report, metric, b, 3) == f'{ours - paper:+.{dec}f}'
    assert '| Set5 | 3 | ' in report and 'paper (RRDB+LDL (DF2K))' in report and '## LPIPS ↓' in report
    assert '0.0691' in report and '27.228' in report  # LPIPS Set5 / PSNR Set14 of the paper's column
    # ours equals the metrics recomputed here from the saved SR images
    vis = out / 'RRDB+LDL_DF2K' / 'visualization' / 'Set5'
    srs = [cv2.imread(str(vis / f'img{i}_RRDB+LDL_DF2K.png')) for i in range(3)]
    gts = [cv2.imread(str(root / 'datasets' / 'Set5' / 'GTmod12' / f'img{i}.png')) for i in range(3)]
    res = result['models']['RRDB+LDL (DF2K)']['results']['Set5']
    assert res['PSNR'] == pytest.approx(np.mean([calculate_psnr(s, g, 4, test_y_channel=True)
                                                 for s, g in zip(srs, gts)]), abs=1e-9)
    assert res['SSIM'] == pytest.approx(np.mean([calculate_ssim(s, g, 4, test_y_channel=True)
                                                 for s, g in zip(srs, gts)]), abs=1e-9)
    f = perceptual_files
    assert res['LPIPS'] == pytest.approx(np.mean([calculate_lpips(s, g, backbone=f['alex'], heads=f['heads_alex'],
                                                                  device='cpu') for s, g in zip(srs, gts)]), rel=1e-5)
    assert res['DISTS'] == pytest.approx(np.mean([calculate_dists(s, g, backbone=f['vgg'], weights=f['dists'],
                                                                  device='cpu') for s, g in zip(srs, gts)]), rel=1e-5)
    assert np.isfinite(res['FID']) and res['FID'] > 0
    assert (out / 'RRDB+LDL_DF2K' / 'fid_stats' / 'Set5_gt.npz').is_file()

    # the saved outputs as a results folder, compared with the same column through --compare-with
    with pytest.warns(UserWarning, match='FID from 3 samples'):
        again = cli_main(SCRIPT)(['--models', f'mine={out / "RRDB+LDL_DF2K" / "visualization"}', '--benchmarks',
                                  str(root / 'datasets'), '--sets', 'Set5', '--out', str(tmp_path / 'again'),
                                  '--device', 'cpu', '--fid-method', 'eigh', '--compare-with',
                                  'mine=rrdb+ldl (df2k)', *_weights_args(perceptual_files, inception)])
    mine = again['models']['mine']
    assert mine['column'] == 'RRDB+LDL (DF2K)'
    for metric in ('PSNR', 'SSIM', 'LPIPS', 'DISTS', 'FID'):
        assert mine['results']['Set5'][metric] == pytest.approx(res[metric], rel=1e-6, abs=1e-9), metric


def test_reproduce_ldl_table_bad_input(bench, perceptual_files, tmp_path, monkeypatch):
    root, inception = bench
    main = cli_main(SCRIPT)
    base = ['--benchmarks', str(root / 'datasets'), '--out', str(tmp_path / 'out'), '--device', 'cpu']
    ckpt = f'm={root / "tiny_rrdb.pth"}'
    before = tree_snapshot(tmp_path)
    msg = user_error_in_process(main, ['--models', ckpt, '--sets', 'Urban100', *base], tmp_path, monkeypatch)
    assert msg == (f'Urban100: {root / "datasets" / "Urban100" / "GTmod12"} does not exist (layout: '
                   'datasets/README.md, "Validation and test sets")')
    msg = user_error_in_process(main, ['--models', f'm={tmp_path / "nope.pth"}', *base], tmp_path, monkeypatch)
    assert msg == f'--models m={tmp_path / "nope.pth"}: no such checkpoint file or results folder'
    msg = user_error_in_process(main, ['--models', 'no-equals-sign', *base], tmp_path, monkeypatch)
    assert msg == "--models 'no-equals-sign': expected LABEL=PATH"
    msg = user_error_in_process(main, ['--models', ckpt, '--compare-with', 'm=BSRGAN', *base], tmp_path,
                                monkeypatch)
    assert msg.startswith("--compare-with 'BSRGAN': not a column of LDL Table 1; columns: SFTGAN, SRGAN, ")
    # a missing metric file is reported before any model runs, with the metric's key
    monkeypatch.setenv('DESRA_LPIPS_ALEX_HEADS', str(tmp_path / 'missing_heads.safetensors'))
    msg = user_error_in_process(main, ['--models', ckpt, '--metrics', 'LPIPS', '--alexnet',
                                       str(perceptual_files['alex']), *base], tmp_path, monkeypatch)
    assert msg.startswith(f'metrics.LPIPS: DESRA_LPIPS_ALEX_HEADS={tmp_path / "missing_heads.safetensors"}: '
                          'file not found')
    assert tree_snapshot(tmp_path) == before  # nothing written


# ------------------------------------------------------------------------------- validation in training

def test_lpips_validation_in_tiny_training(tmp_path, tiny_data, perceptual_files, bench, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    f = perceptual_files
    monkeypatch.setenv('DESRA_ALEXNET_WEIGHTS', str(f['alex']))
    monkeypatch.setenv('DESRA_LPIPS_ALEX_HEADS', str(f['heads_alex']))
    monkeypatch.setenv('DESRA_FID_INCEPTION_WEIGHTS', str(bench[1]))
    metrics = ('{psnr: {type: calculate_psnr, crop_border: 4, test_y_channel: true}, '
               'lpips: {type: calculate_lpips, crop_border: 4}, lpips_pt: {type: calculate_lpips_pt, crop_border: 4}, '
               'fid: {type: calculate_fid, method: eigh}}')
    out = run_script('train.py', ['-opt', TINY_GAN_LDL, '--force_yml', 'name=tiny_lpips', *data_overrides(tiny_data),
                                  'train:total_iter=4', 'val:val_freq=2', 'logger:use_tb_logger=true',
                                  'logger:save_checkpoint_freq=4', f'val:metrics={metrics}'], tmp_path)
    assert out.returncode == 0, out.stderr
    tb = tmp_path / 'tb_logger' / 'tiny_lpips'
    acc = EventAccumulator(str(tb))
    acc.Reload()
    tags = acc.Tags()['scalars']
    for name in ('psnr', 'lpips', 'lpips_pt', 'fid'):
        assert f'metrics/tiny_val/{name}' in tags
        assert [e.step for e in acc.Scalars(f'metrics/tiny_val/{name}')] == [2, 4]
    # the numpy (uint8 images) and tensor versions agree up to the 8-bit rounding of the SR image
    lp = [e.value for e in acc.Scalars('metrics/tiny_val/lpips')]
    lp_pt = [e.value for e in acc.Scalars('metrics/tiny_val/lpips_pt')]
    np.testing.assert_allclose(lp, lp_pt, rtol=0.05)
    log = open(next((tmp_path / 'experiments' / 'tiny_lpips').glob('train_tiny_lpips_*.log'))).read()
    assert re.search(r'lpips: \d\.\d{4} \(best \d\.\d{4} @ iter \d, lower is better\)', log)
    assert re.search(r'psnr: [\d.]+ \(best [\d.]+ @ iter \d, higher is better\)', log)
    assert re.search(r'fid: [\d.]+ \(best [\d.]+ @ iter \d, lower is better\)', log)
    assert 'FID from 8 samples (< 2048 features)' in log  # the small-set warning reaches the log
    best = min(lp)  # lower is better: the best is the minimum, at its iteration
    assert f'lpips: {lp[-1]:.4f} (best {best:.4f} @ iter {2 + 2 * lp.index(best)}, lower is better)' in log


def test_missing_lpips_backbone_stops_training_before_it_starts(tmp_path, tiny_data, monkeypatch):
    from desra.weights import locate

    for spec in (locate.ALEXNET, locate.LPIPS_HEADS['alex']):
        monkeypatch.delenv(spec.env, raising=False)
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    monkeypatch.setattr(locate, 'REPO_ROOT', tmp_path / 'repo')
    before = tree_snapshot(tmp_path)
    msg = user_error_in_process(cli_main('train.py'), [
        '-opt', TINY_GAN_LDL, '--force_yml', 'name=tiny_nolpips', *data_overrides(tiny_data),
        'val:metrics={lpips: {type: calculate_lpips}}'], tmp_path, monkeypatch)
    assert msg.startswith('val.metrics.lpips: LPIPS (net=alex) needs alexnet-owt-7be5be79.pth (torchvision\'s '
                          f'AlexNet ImageNet weights): put it in {tmp_path / "repo" / "pretrained"}/')
    assert tree_snapshot(tmp_path) == before  # no experiments/ or tb_logger/ folder
