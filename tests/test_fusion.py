"""Multi-model fusion (desra/fusion.py) and its pipeline (scripts/fuse.py, desra/pipelines/fuse.py)."""
import json
import math
import os
import re
from urllib.parse import unquote

import cv2
import numpy as np
import pytest
import yaml

from conftest import REPO, cli_main, run_script, tree_snapshot, user_error_in_process, write_opt
from desra.fusion import fuse, kernel_radius, max_kernel_tap

TINY_FUSE = os.path.join(REPO, 'options', 'tiny', 'fuse.yml')
NAMES = ('im0', 'im1', 'im2')
LR_SIZE, SCALE = 16, 4
HR_SIZE = LR_SIZE * SCALE


# ============================================================================================ fuse()
def _rand_outputs(rng, k, shape, dtype):
    if dtype == np.uint8:
        return [rng.integers(0, 256, shape).astype(np.uint8) for _ in range(k)]
    return [rng.random(shape).astype(dtype) for _ in range(k)]


@pytest.mark.parametrize('rule', ['select', 'weighted'])
@pytest.mark.parametrize('dtype', [np.uint8, np.float32, np.float64])
def test_identical_outputs_give_that_output_exactly(rule, dtype):
    rng = np.random.default_rng(0)
    out = _rand_outputs(rng, 1, (20, 24, 3), dtype)[0]
    for feather in (0, 2.5):
        probs = [rng.random((20, 24)) for _ in range(3)]
        probs[1][:5] = 1.0  # flagged everywhere in some rows
        probs[2][:5] = 1.0
        probs[0][:5] = 1.0
        fused = fuse([out.copy(), out.copy(), out.copy()], probs, rule=rule, base=1, feather=feather, gamma=2.0)
        assert fused.dtype == out.dtype
        assert np.array_equal(fused, out)
    gray = out[..., 0]
    assert np.array_equal(fuse([gray, gray], [probs[0], probs[1]], rule=rule), gray)


def test_select_takes_the_output_whose_map_is_clean_where_the_others_are_flagged():
    rng = np.random.default_rng(1)
    outs = _rand_outputs(rng, 3, (30, 30, 3), np.uint8)
    region = np.zeros((30, 30), bool)
    region[8:20, 5:25] = True
    probs = [np.ones((30, 30), np.float32) for _ in range(3)]
    probs[2][region] = 0.0
    fused, weights = fuse(outs, probs, rule='select', base=0, feather=0, return_weights=True)
    assert np.array_equal(fused[region], outs[2][region])
    assert np.array_equal(fused[~region], outs[0][~region])  # all flagged outside: a tie, the base wins
    assert weights.shape == (3, 30, 30) and np.array_equal(weights[2], region.astype(np.float32))


@pytest.mark.parametrize('dtype', [np.uint8, np.float64])
def test_region_flagged_in_a_and_clean_in_b_takes_b(dtype):
    rng = np.random.default_rng(2)
    a, b = _rand_outputs(rng, 2, (48, 48, 3), dtype)
    region = np.zeros((48, 48), bool)
    region[12:36, 10:38] = True
    p_a = region.astype(np.float32)
    p_b = np.zeros((48, 48), np.float32)
    hard = fuse([a, b], [p_a, p_b], rule='select', base=0, feather=0)
    assert np.array_equal(hard[region], b[region]) and np.array_equal(hard[~region], a[~region])

    sigma = 2.0
    r = kernel_radius(sigma)
    inner = cv2.erode(region.astype(np.uint8), np.ones((2 * r + 1, 2 * r + 1), np.uint8)) > 0
    outer = cv2.dilate(region.astype(np.uint8), np.ones((2 * r + 1, 2 * r + 1), np.uint8)) == 0
    assert inner.sum() > 0 and outer.sum() > 0
    soft = fuse([a, b], [p_a, p_b], rule='select', base=0, feather=sigma)
    assert np.array_equal(soft[inner], b[inner])   # farther than the kernel radius from the region's border
    assert np.array_equal(soft[outer], a[outer])
    band = ~inner & ~outer
    assert not np.array_equal(soft[band], hard[band])  # the seam itself is blended


@pytest.mark.parametrize('dtype', [np.uint8, np.float32])
def test_weighted_stays_within_the_per_pixel_min_and_max(dtype):
    rng = np.random.default_rng(3)
    outs = _rand_outputs(rng, 4, (40, 36, 3), dtype)
    probs = [rng.random((40, 36)) for _ in range(4)]
    probs[0][:10] = probs[1][:10] = probs[2][:10] = probs[3][:10] = 1.0  # every model flagged
    lo, hi = np.min(outs, axis=0), np.max(outs, axis=0)
    for gamma, feather in ((1.0, 0), (2.0, 1.5), (0.5, 4)):
        fused, weights = fuse(outs, probs, rule='weighted', base=2, feather=feather, gamma=gamma,
                              return_weights=True)
        assert np.all(fused >= lo) and np.all(fused <= hi)
        assert np.all(weights >= 0) and np.allclose(weights.sum(0), 1, atol=1e-5)
    fused = fuse(outs, probs, rule='weighted', base=2, feather=0)
    assert np.array_equal(fused[:10], outs[2][:10])  # all flagged: the base model


@pytest.mark.parametrize('rule', ['select', 'weighted'])
def test_feathered_edge_is_continuous(rule):
    """Constant outputs 0 and 255, A clean on the left, B on the right: the hard selection jumps by 255 at the
    edge; with sigma s the jump between neighbours is one kernel tap, <= 255 / (s sqrt(2 pi)) (1 % slack for the
    discrete kernel) + 1 for the rounding."""
    h, w, d = 16, 80, 255
    a, b = np.zeros((h, w, 3), np.uint8), np.full((h, w, 3), d, np.uint8)
    p_a = np.zeros((h, w), np.float32)
    p_a[:, w // 2:] = 1.0
    p_b = 1.0 - p_a
    hard = fuse([a, b], [p_a, p_b], rule=rule, feather=0).astype(int)
    assert np.abs(np.diff(hard, axis=1)).max() == d
    for sigma in (2.0, 4.0, 8.0):
        soft = fuse([a, b], [p_a, p_b], rule=rule, feather=sigma).astype(int)
        bound = d * 1.01 / (sigma * math.sqrt(2 * math.pi)) + 1
        assert max_kernel_tap(sigma) * d + 1 <= bound
        jump = np.abs(np.diff(soft, axis=1)).max()
        assert jump <= bound < d / 4
        assert soft[:, 0].max() == 0 and soft[:, -1].min() == d  # far from the edge: the clean output


def test_ties_go_to_the_base_then_the_lowest_index():
    rng = np.random.default_rng(4)
    outs = _rand_outputs(rng, 3, (10, 12, 3), np.uint8)
    equal = np.full((10, 12), 0.3, np.float32)
    for base in range(3):
        assert np.array_equal(fuse(outs, [equal] * 3, base=base, feather=0), outs[base])
        assert np.array_equal(fuse(outs, [equal] * 3, base=base, feather=3), outs[base])
    near = [np.full((10, 12), v, np.float32) for v in (0.31, 0.30, 0.9)]  # within the default tie_tol 0.02
    assert np.array_equal(fuse(outs, near, base=0, feather=0), outs[0])
    assert np.array_equal(fuse(outs, near, base=0, feather=0, tie_tol=0), outs[1])
    clear = [np.full((10, 12), v, np.float32) for v in (0.5, 0.30, 0.9)]
    assert np.array_equal(fuse(outs, clear, base=0, feather=0), outs[1])
    two = [np.full((10, 12), v, np.float32) for v in (0.9, 0.1, 0.1)]  # tie of two non-base models
    assert np.array_equal(fuse(outs, two, base=0, feather=0), outs[1])


def test_fuse_errors_are_one_line():
    rng = np.random.default_rng(5)
    a, b = _rand_outputs(rng, 2, (8, 10, 3), np.uint8)
    p = np.zeros((8, 10), np.float32)
    cases = [
        (lambda: fuse([a, b[:6]], [p, p]),
         'fuse: outputs[1] is 6x10 (HxW) x 3 but outputs[0] is 8x10 (HxW) x 3; all K outputs must have the same '
         'size'),
        (lambda: fuse([a, b], [p, p[:4]]),
         "fuse: artifact_probs[1] is 4x10 (HxW) but the outputs are 8x10 (HxW); each map must be H x W at the "
         "outputs' size"),
        (lambda: fuse([a, b], [p, p + 1.5]),
         'fuse: artifact_probs[1] has values outside [0, 1] (min 1.5, max 1.5); give probabilities, not logits or '
         '8-bit maps'),
        (lambda: fuse([a, b], [p, np.full_like(p, np.nan)]),
         'fuse: artifact_probs[1] has values outside [0, 1] (min nan, max nan); give probabilities, not logits or '
         '8-bit maps'),
        (lambda: fuse([], []), 'fuse: need at least one output (K >= 1), got none'),
        (lambda: fuse([a, b], [p, p], rule='average'),
         "fuse: unknown rule 'average'; expected one of 'select', 'weighted'"),
        (lambda: fuse([a, b], [p]), 'fuse: 2 output(s) but 1 artifact map(s); give one H x W map per output'),
        (lambda: fuse([a, b], [p, p], base=2), 'fuse: base must be an output index in [0, 1], got 2'),
        (lambda: fuse([a, b], [p, p], feather=-1), 'fuse: feather must be a finite number >= 0, got -1'),
        (lambda: fuse([a, b.astype(np.float32)], [p, p]),
         'fuse: outputs[1] is float32 but outputs[0] is uint8; give all K outputs in one dtype'),
    ]
    for call, message in cases:
        with pytest.raises(ValueError) as e:
            call()
        assert str(e.value) == message


# ============================================================================================ pipeline
@pytest.fixture(scope='module')
def data(tmp_path_factory):
    """LR / HR, two folder models (bicubic, nearest x4), a stand-in localiser, two tiny x4 generators, and
    random LPIPS files (AlexNet backbone + heads) in one folder."""
    import torch

    from desra.archs.alexnet_arch import alexnet_features
    from desra.archs.discriminator_arch import UNetDiscriminatorSN
    from desra.archs.rrdbnet_arch import RRDBNet

    root = tmp_path_factory.mktemp('fuse_data')
    rng = np.random.default_rng(0)
    for d in ('LR', 'HR', 'A', 'B'):
        (root / d).mkdir()
    for name in NAMES:
        hr = cv2.resize(rng.integers(0, 256, (8, 8, 3)).astype(np.uint8), (HR_SIZE, HR_SIZE),
                        interpolation=cv2.INTER_CUBIC)
        lr = cv2.resize(hr, (LR_SIZE, LR_SIZE), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(root / 'HR' / f'{name}.png'), hr)
        cv2.imwrite(str(root / 'LR' / f'{name}.png'), lr)
        cv2.imwrite(str(root / 'A' / f'{name}.png'), cv2.resize(lr, (HR_SIZE, HR_SIZE), interpolation=cv2.INTER_CUBIC))
        cv2.imwrite(str(root / 'B' / f'{name}.png'),
                    cv2.resize(lr, (HR_SIZE, HR_SIZE), interpolation=cv2.INTER_NEAREST))
    torch.manual_seed(0)
    torch.save({'params': UNetDiscriminatorSN(3, 4).state_dict()}, root / 'localizer.pth')
    for i in (1, 2):
        torch.manual_seed(i)
        torch.save({'params_ema': RRDBNet(3, 3, 4, 4, 1, 4).state_dict()}, root / f'g{i}.pth')
    torch.save({'params': RRDBNet(3, 3, 4, 4, 1, 4).state_dict()}, root / 'wrong_arch.pth')
    features = alexnet_features()
    torch.save({f'features.{k}': v for k, v in features.state_dict().items()}, root / 'alexnet.pth')
    g = torch.Generator().manual_seed(1)
    torch.save({f'lin{i}.model.1.weight': torch.rand(1, c, 1, 1, generator=g) * 0.1
                for i, c in enumerate((64, 192, 384, 256, 256))}, root / 'heads.pth')
    return root


def _opt(data, **changes):
    with open(TINY_FUSE) as f:
        opt = yaml.safe_load(f)
    opt.update(inputs=str(data / 'LR'), gt=str(data / 'HR'),
               models=[{'name': 'A', 'folder': str(data / 'A')}, {'name': 'B', 'folder': str(data / 'B')}])
    opt['artifact_map']['checkpoint'] = str(data / 'localizer.pth')
    opt.update(changes)
    return opt


def _generators(data):
    net = {'type': 'RRDBNet', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 4, 'num_block': 1, 'num_grow_ch': 4}
    return [{'name': f'G{i}', 'network': net, 'checkpoint': str(data / f'g{i}.pth'), 'tile': 8, 'tile_pad': 4}
            for i in (1, 2)]


def _files(root):
    out = set()
    for dirpath, _, filenames in os.walk(root):
        for f in filenames:
            rel = os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, '/')
            if not (rel.startswith('fuse_') and rel.endswith('.log')):
                out.add(rel)
    return out


def _expected(models, generated=()):
    files = {'index.html', 'metrics.md', 'metrics.json'}
    for n in NAMES:
        files |= {f'fused/{n}.png', f'weights/{n}.png', f'records/{n}.json', f'maps/fused/{n}.png'}
        files |= {f'maps/{m}/{n}.png' for m in models} | {f'outputs/{m}/{n}.png' for m in generated}
    return files


def _gallery_refs_exist(root):
    text = open(os.path.join(root, 'index.html'), encoding='utf-8').read()
    refs = re.findall(r'(?:src|href)="([^"]+)"', text)
    assert refs
    for ref in refs:
        assert os.path.isfile(os.path.normpath(os.path.join(root, unquote(ref)))), ref
    return refs


def _probs(root, model, name):
    return cv2.imread(os.path.join(root, 'maps', model, f'{name}.png'), cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255


def _check_metrics(root, data, outputs, models, base=0, rule='select'):
    """metrics.json against PSNR / SSIM recomputed here, and the mean rows of metrics.md."""
    from desra.metrics import calculate_psnr, calculate_ssim

    info = json.load(open(os.path.join(root, 'metrics.json')))
    assert info['methods'] == [*models, 'fused'] and info['images'] == len(NAMES) and info['crop_border'] == SCALE
    table = open(os.path.join(root, 'metrics.md'), encoding='utf-8').read()
    for m in [*models, 'fused']:
        psnrs = []
        for n in NAMES:
            img = cv2.imread(outputs[m](n))
            gt = cv2.imread(str(data / 'HR' / f'{n}.png'))
            psnr = calculate_psnr(img, gt, SCALE, test_y_channel=True)
            assert info['per_image'][n][m]['psnr'] == pytest.approx(psnr, abs=1e-9)
            assert info['per_image'][n][m]['ssim'] == pytest.approx(
                calculate_ssim(img, gt, SCALE, test_y_channel=True), abs=1e-9)
            psnrs.append(psnr)
        assert info['mean'][m]['psnr'] == pytest.approx(np.mean(psnrs), abs=1e-9)
        label = {'fused': f'fused ({rule})', models[base]: f'{models[base]} (base)'}.get(m, m)
        assert f"| {label} | {np.mean(psnrs):.4f} | {info['mean'][m]['ssim']:.4f} |" in table
    return info, table


def test_fuse_folders_with_localizer(data, tmp_path, monkeypatch):
    from desra.detection.localizer import load_localizer, predict_probability
    from desra.metrics import calculate_lpips

    monkeypatch.setenv('DESRA_ALEXNET_WEIGHTS', str(data / 'alexnet.pth'))
    monkeypatch.setenv('DESRA_LPIPS_ALEX_HEADS', str(data / 'heads.pth'))
    monkeypatch.chdir(tmp_path)
    opt_path = write_opt(tmp_path / 'fuse.yml', _opt(data))
    main = cli_main('scripts/fuse.py')
    result = main(['-opt', opt_path])
    root = str(tmp_path / 'out')
    assert result['processed'] == 3 and result['skipped'] == 0 and result['root'] == root
    assert _files(root) == _expected(['A', 'B'])
    refs = _gallery_refs_exist(root)
    assert any(r.endswith('/A/im0.png') for r in refs) and any(r.endswith('/HR/im0.png') for r in refs)

    net = load_localizer(_opt(data)['artifact_map']['network'], str(data / 'localizer.pth'), 'params')
    for n in NAMES:
        outs = [cv2.imread(str(data / m / f'{n}.png')) for m in 'AB']
        for m, img in zip('AB', outs):  # each map is the localiser's probability as 8 bits
            p = predict_probability(net, img.astype(np.float32), tile=32, overlap=8)
            assert np.array_equal(_probs(root, m, n), np.rint(p * 255) / 255)
        probs = [_probs(root, m, n) for m in 'AB']
        fused = cv2.imread(os.path.join(root, 'fused', f'{n}.png'))
        ref, weights = fuse(outs, probs, rule='select', base=0, feather=1.0, tie_tol=0.02, return_weights=True)
        assert np.array_equal(fused, ref)
        inherited = _probs(root, 'fused', n)  # the fused image's map: sum_k W_k p_k
        assert np.abs(inherited - (weights * np.stack(probs)).sum(0)).max() <= 0.5 / 255 + 1e-6
        areas = json.load(open(os.path.join(root, 'records', f'{n}.json')))['metrics']
        assert areas['A']['artifact_area'] == pytest.approx(float((probs[0] > 0.5).mean()))
        assert areas['fused']['artifact_area'] == pytest.approx(float((inherited > 0.5).mean()))

    outputs = {'A': lambda n: str(data / 'A' / f'{n}.png'), 'B': lambda n: str(data / 'B' / f'{n}.png'),
               'fused': lambda n: os.path.join(root, 'fused', f'{n}.png')}
    info, table = _check_metrics(root, data, outputs, ['A', 'B'])
    assert info['lpips']['available'] and 'LPIPS-alex ↓' in table
    img, gt = cv2.imread(outputs['B']('im1')), cv2.imread(str(data / 'HR' / 'im1.png'))
    lp = calculate_lpips(img, gt, SCALE, backbone=str(data / 'alexnet.pth'), heads=str(data / 'heads.pth'),
                         device='cpu')
    assert info['per_image']['im1']['B']['lpips'] == pytest.approx(lp, rel=1e-5)

    # a rerun with the same settings skips every image and rewrites none of its files
    before = tree_snapshot(root)
    again = main(['-opt', opt_path])
    assert again['processed'] == 0 and again['skipped'] == 3
    after = tree_snapshot(root)
    for rel in before:
        if rel.split(os.sep)[0] in ('fused', 'maps', 'weights', 'records'):
            assert after[rel] == before[rel], rel
    assert json.load(open(os.path.join(root, 'metrics.json'))) == info
    # another setting recomputes, and says which
    changed = main(['-opt', opt_path, '--force_yml', 'fusion:feather=0'])
    assert changed['processed'] == 3 and set(changed['reasons'].values()) == {'settings changed: fusion.feather'}


def test_fuse_generators_on_lr_inputs(data, tmp_path, monkeypatch):
    import torch

    from desra.archs.rrdbnet_arch import RRDBNet
    from desra.inference import tiled_forward
    from desra.weights import locate

    for var in ('DESRA_ALEXNET_WEIGHTS', 'DESRA_LPIPS_ALEX_HEADS'):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(locate, 'REPO_ROOT', tmp_path)  # no LPIPS files anywhere: the column says why
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    opt = _opt(data, models=_generators(data))
    opt['fusion'] = {'rule': 'weighted', 'base': 'G2', 'feather': 1.5, 'gamma': 2.0}
    opt_path = write_opt(tmp_path / 'fuse.yml', opt)
    monkeypatch.chdir(tmp_path)
    result = cli_main('scripts/fuse.py')(['-opt', opt_path])
    root = str(tmp_path / 'out')
    assert result['processed'] == 3
    assert _files(root) == _expected(['G1', 'G2'], generated=['G1', 'G2'])
    _gallery_refs_exist(root)
    for n in NAMES:
        lr = cv2.imread(str(data / 'LR' / f'{n}.png'))
        outs = [cv2.imread(os.path.join(root, 'outputs', m, f'{n}.png')) for m in ('G1', 'G2')]
        for i, out in zip((1, 2), outs):
            net = RRDBNet(3, 3, 4, 4, 1, 4)
            net.load_state_dict(torch.load(data / f'g{i}.pth')['params_ema'])
            lq = torch.from_numpy(lr[..., ::-1].copy()).permute(2, 0, 1)[None].float() / 255
            ref = (tiled_forward(net.eval(), lq, SCALE).clamp(0, 1) * 255).round()[0].permute(1, 2, 0).numpy()
            assert out.shape == (HR_SIZE, HR_SIZE, 3)
            assert np.abs(out.astype(int) - ref[..., ::-1].astype(int)).max() <= 1
        probs = [_probs(root, m, n) for m in ('G1', 'G2')]
        fused = cv2.imread(os.path.join(root, 'fused', f'{n}.png'))
        assert np.array_equal(fused, fuse(outs, probs, rule='weighted', base=1, feather=1.5, gamma=2.0))
    outputs = {m: (lambda n, m=m: os.path.join(root, 'outputs', m, f'{n}.png')) for m in ('G1', 'G2')}
    outputs['fused'] = lambda n: os.path.join(root, 'fused', f'{n}.png')
    info, table = _check_metrics(root, data, outputs, ['G1', 'G2'], base=1, rule='weighted')
    assert not info['lpips']['available']
    assert info['lpips']['reason'] == 'alexnet-owt-7be5be79.pth, lpips_alex_v0.1.safetensors not found'
    assert set(info['mean']['fused']) == {'psnr', 'ssim', 'artifact_area'}
    assert '| LPIPS ↓ (n/a: alexnet-owt-7be5be79.pth, lpips_alex_v0.1.safetensors not found) |' in table
    assert '| G2 (base) |' in table and '| fused (weighted) |' in table


def test_fuse_desra_map_without_inputs(data, tmp_path, monkeypatch):
    from desra.detection.detector import detect_artifacts

    opt = _opt(data, inputs=None, gt=None, scale=1, output=str(tmp_path / 'out'))
    opt['artifact_map'] = {'type': 'desra', 'mse_folder': str(data / 'A'), 'threshold': 0.9, 'min_area': 0,
                           'erode': 0, 'dilate': 0, 'dilate_iterations': 0, 'fill_holes': 0}
    opt['metrics']['fused_map'] = 'detect'  # the detector run on the fused image
    monkeypatch.chdir(tmp_path)
    result = cli_main('scripts/fuse.py')(['-opt', write_opt(tmp_path / 'fuse.yml', opt)])
    root = str(tmp_path / 'out')
    assert result['processed'] == 3 and _files(root) == _expected(['A', 'B'])
    _gallery_refs_exist(root)
    assert not any(_probs(root, 'A', n).any() for n in NAMES)  # A is its own MSE-SR: no artifact
    p_b = np.stack([_probs(root, 'B', n) for n in NAMES])
    assert set(np.unique(p_b)) == {0.0, 1.0}  # the binary masks of (A, B)
    for n in NAMES:
        fused = cv2.imread(os.path.join(root, 'fused', f'{n}.png'))
        mse = cv2.imread(str(data / 'A' / f'{n}.png'))
        ref = fuse([mse, cv2.imread(str(data / 'B' / f'{n}.png'))], [_probs(root, m, n) for m in 'AB'], feather=1.0)
        assert np.array_equal(fused, ref)
        mask = detect_artifacts(mse.astype(np.float32), fused.astype(np.float32), threshold=0.9, min_area=0, erode=0,
                                dilate=0, dilate_iterations=0, fill_holes=0)
        assert np.array_equal(_probs(root, 'fused', n), (mask > 0).astype(np.float32))
    info = json.load(open(os.path.join(root, 'metrics.json')))
    assert info['gt'] is False and set(info['mean']['B']) == {'artifact_area'}


def _bad_folder(data, tmp_path, name, edit):
    folder = tmp_path / name
    folder.mkdir()
    for n in NAMES:
        img = cv2.imread(str(data / 'B' / f'{n}.png'))
        img = edit(n, img)
        if img is not None:
            cv2.imwrite(str(folder / f'{n}.png'), img)
    return str(folder)


def test_fuse_bad_input_one_line_messages(data, tmp_path, monkeypatch):
    main = cli_main('scripts/fuse.py')

    def error(opt, *extra):
        msg = user_error_in_process(main, ['-opt', write_opt(tmp_path / 'bad.yml', opt), *extra], tmp_path,
                                    monkeypatch)
        assert '\n' not in msg and not os.path.exists(tmp_path / 'out')
        return msg

    small = _bad_folder(data, tmp_path, 'C', lambda n, img: img[:60, :56] if n == 'im1' else img)
    a1, c1 = data / 'A' / 'im1.png', os.path.join(small, 'im1.png')
    models = [{'name': 'A', 'folder': str(data / 'A')}, {'name': 'C', 'folder': small}]
    assert error(_opt(data, inputs=None, models=models)) == (
        f'models[1] (C): {c1} is 56x60 (WxH) but models[0] (A): {a1} is 64x64 (WxH); the K outputs of one input '
        f'must have the same size')
    assert error(_opt(data, models=models)) == (
        f"models[1] (C): {c1} is 56x60 (WxH) but the input {data / 'LR' / 'im1.png'} is 16x16 (WxH), x4 = 64x64 "
        f"(WxH); outputs must be the input size times scale")

    missing = _bad_folder(data, tmp_path, 'D', lambda n, img: None if n == 'im2' else img)
    models = [{'name': 'A', 'folder': str(data / 'A')}, {'name': 'D', 'folder': missing}]
    assert error(_opt(data, models=models)) == (
        f"models[1] (D).folder: 1 of 3 image(s) have no output in {missing}: 'im2' (input "
        f"{data / 'LR' / 'im2.png'}); images are paired by file name without extension")

    opt = _opt(data)
    opt['fusion']['feathr'] = 2
    assert error(opt) == 'fusion.feathr: unknown key; did you mean feather?'
    opt = _opt(data)
    opt['models'][1]['tile'] = 64
    assert error(opt) == 'models[1].tile: unknown key; known keys here: folder, name, suffix'

    from desra.detection.localizer import load_localizer
    from desra.errors import CheckpointError

    opt = _opt(data)
    opt['artifact_map']['checkpoint'] = str(data / 'wrong_arch.pth')
    with pytest.raises(CheckpointError) as e:
        load_localizer(opt['artifact_map']['network'], str(data / 'wrong_arch.pth'), 'params',
                       key_path='artifact_map')
    msg = error(opt)
    assert msg == str(e.value)
    assert msg.startswith(f"artifact_map.checkpoint: checkpoint '{data / 'wrong_arch.pth'}' does not match "
                          f"UNetDiscriminatorSN: ")
    assert 'missing key(s) (in the network, not in the file): conv0.weight' in msg
    assert 'unexpected key(s) (in the file, not in the network): conv_first.weight' in msg


def test_fuse_cli_prints_one_line(data, tmp_path):
    opt = _opt(data)
    opt['fusion']['rule'] = 'selct'
    proc = run_script('scripts/fuse.py', ['-opt', write_opt(tmp_path / 'bad.yml', opt)], str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: fusion.rule: unknown value 'selct'; did you mean select? expected one of select, weighted")
    assert not os.path.exists(tmp_path / 'out')
