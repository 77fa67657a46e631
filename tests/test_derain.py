"""Deraining: the synthetic rain model (desra/data/synthetic_rain.py), its script, the released-set converter,
test.py at scale 1 on the paired rainy/clean layout, and the paper's Table 1 reproduction script."""
import json
import os

import cv2
import numpy as np
import pytest

from conftest import REPO, cli_main, tree_snapshot, user_error_in_process
from desra.data.synthetic_rain import (DEFAULT_LAYER, RainLayer, Streaks, add_rain, check_layer, image_rng,
                                       image_seed, light_layer, rain_layer, render_streaks, sample_streaks)
from desra.errors import ConfigError
from desra.metrics import calculate_lpips, calculate_psnr, calculate_ssim
from desra.pipelines.derain_table import PAPER_TABLE1, paper_row

RAIN = 'scripts/make_synthetic_rain.py'
TABLE = 'scripts/reproduce_derain_table.py'
PREPARE = 'scripts/prepare_derain_sets.py'
TINY_X1 = '{type: RRDBNet, num_in_ch: 3, num_out_ch: 3, num_feat: 8, num_block: 1, num_grow_ch: 4, scale: 1}'


def orientation(layer):
    """(angle from vertical in degrees, length, centre x, centre y) of a layer by its image moments: the principal
    axis of the second central moments; a uniform segment of length L has variance L^2 / 12 along it (the spread
    across it, from width and blur, is subtracted)."""
    ys, xs = np.mgrid[:layer.shape[0], :layer.shape[1]]
    m = layer.sum()
    cx, cy = (layer * xs).sum() / m, (layer * ys).sum() / m
    mu20, mu02 = (layer * (xs - cx) ** 2).sum() / m, (layer * (ys - cy) ** 2).sum() / m
    mu11 = (layer * (xs - cx) * (ys - cy)).sum() / m
    angle = 0.5 * np.degrees(np.arctan2(2 * mu11, mu02 - mu20))
    root = np.sqrt(0.25 * (mu02 - mu20) ** 2 + mu11 ** 2)
    return angle, np.sqrt(12 * 2 * root), cx, cy  # lambda_max - lambda_min = 2 * root


def one_streak(x, y, length, angle, brightness=200.):
    return Streaks(*(np.array([v], np.float64) for v in (x, y, length, angle, brightness)))


# ------------------------------------------------------------------------------------------- the rain model

@pytest.mark.parametrize('angle,length', [(0, 12), (10, 30), (-25, 21.5), (40, 35)])
def test_one_streak_has_the_angle_and_length_asked_for(angle, length):
    layer = render_streaks((90, 90), one_streak(45.3, 44.6, length, angle), width=1.5, blur=0.8)
    a, ln, cx, cy = orientation(layer)
    assert a == pytest.approx(angle, abs=0.1) and ln == pytest.approx(length, abs=0.3)
    assert (cx, cy) == (pytest.approx(45.3, abs=0.01), pytest.approx(44.6, abs=0.01))
    # positive angle: the lower end of the streak is to the right of the upper end
    rows = np.nonzero(layer.max(axis=1) > 20)[0]
    top, bottom = (float(np.argmax(layer[r])) for r in (rows[0], rows[-1]))
    assert np.sign(bottom - top) == np.sign(angle)
    # a vertical streak centred on a pixel column peaks at its brightness
    vertical = render_streaks((90, 90), one_streak(45, 45, length, 0, 123.), width=1.5, blur=0.8)
    assert vertical.max() == pytest.approx(123., rel=1e-5)


def test_rain_on_a_zero_image_with_one_streak():
    """The whole path on a black image: one streak (a density that draws exactly one with this seed), the angle
    and length of the rendered streak are the ones sampled, within the parameters' ranges."""
    layer = RainLayer(density=20, length=(25, 35), angle=20, angle_jitter=5, intensity=0.8, intensity_jitter=0,
                      width=1, blur=0.5)

    def draw(seed):
        return sample_streaks((200, 200), layer, np.random.default_rng(seed))

    seed = next(s for s in range(100) if len(draw(s)) == 1 and 40 < draw(s).x[0] < 160 and 40 < draw(s).y[0] < 160)
    st = draw(seed)
    rainy, r = add_rain(np.zeros((200, 200, 3), np.uint8), [layer], rng=seed)
    assert 15 <= st.angle[0] <= 25 and 25 <= st.length[0] <= 35 and st.brightness[0] == pytest.approx(0.8 * 255)
    a, ln, cx, cy = orientation(r)
    assert a == pytest.approx(st.angle[0], abs=0.1) and ln == pytest.approx(st.length[0], abs=0.3)
    assert (cx, cy) == (pytest.approx(st.x[0], abs=0.01), pytest.approx(st.y[0], abs=0.01))
    np.testing.assert_array_equal(rainy, np.repeat(np.round(np.clip(r, 0, 255)).astype(np.uint8)[..., None], 3, 2))


def test_sampled_streaks_lie_in_the_parameter_ranges():
    layer = RainLayer(density=3000, length=(8, 16), angle=-12, angle_jitter=4, intensity=0.6, intensity_jitter=0.5)
    st = sample_streaks((300, 400), layer, np.random.default_rng(0))
    assert len(st) > 300
    assert st.length.min() >= 8 and st.length.max() <= 16 and np.ptp(st.length) > 7
    assert st.angle.min() >= -16 and st.angle.max() <= -8 and np.ptp(st.angle) > 7
    assert st.brightness.min() >= 0.5 * 0.6 * 255 - 1e-9 and st.brightness.max() <= 0.6 * 255 + 1e-9
    m = 16 / 2 + 3 * layer.blur + layer.width  # the margin the seeds are spread over
    assert st.x.min() >= -m and st.x.max() <= 399 + m and st.y.min() >= -m and st.y.max() <= 299 + m


def test_density_scales_the_streak_count():
    counts = {}
    for d in (500, 2000, 8000):
        layer = dataclass_replace(DEFAULT_LAYER, density=d)
        st = sample_streaks((1000, 1000), layer, np.random.default_rng(1))
        inside = int(((st.x >= -0.5) & (st.x < 999.5) & (st.y >= -0.5) & (st.y < 999.5)).sum())
        counts[d] = inside
        assert inside == pytest.approx(d, rel=5 / np.sqrt(d))  # per megapixel: d streaks centred in 1000x1000
    assert counts[2000] / counts[500] == pytest.approx(4, rel=0.15)
    assert counts[8000] / counts[2000] == pytest.approx(4, rel=0.1)
    assert len(sample_streaks((100, 100), dataclass_replace(DEFAULT_LAYER, density=0), np.random.default_rng(0))) == 0


def dataclass_replace(layer, **kw):
    import dataclasses

    return dataclasses.replace(layer, **kw)


def test_intensity_scales_the_layer_and_layers_add_up():
    r1 = rain_layer((120, 160), [dataclass_replace(DEFAULT_LAYER, intensity=0.2)], rng=5)
    r2 = rain_layer((120, 160), [dataclass_replace(DEFAULT_LAYER, intensity=0.4)], rng=5)
    assert r1.max() > 10
    np.testing.assert_allclose(r2, 2 * r1, rtol=1e-5, atol=1e-4)
    # two layers from one generator = each layer drawn in turn from it; the haze is a uniform veil on top
    light = light_layer(DEFAULT_LAYER)
    both = rain_layer((120, 160), [DEFAULT_LAYER, light], haze=0.1, rng=7)
    g = np.random.default_rng(7)
    parts = rain_layer((120, 160), [DEFAULT_LAYER], rng=g) + rain_layer((120, 160), [light], rng=g)
    np.testing.assert_allclose(both, parts + 25.5, rtol=1e-6, atol=1e-4)
    assert both.min() >= 25.5 - 1e-4
    assert light.density == 3 * DEFAULT_LAYER.density and light.length == (8, 16)
    assert light.intensity == pytest.approx(0.4 * DEFAULT_LAYER.intensity) and light.width == 1


def test_seeded_and_rainy_is_clipped_sum():
    rng = np.random.default_rng(0)
    clean = rng.integers(0, 256, (64, 80, 3)).astype(np.uint8)
    rainy, r = add_rain(clean, [DEFAULT_LAYER, light_layer()], rng=3)
    again, r_again = add_rain(clean, [DEFAULT_LAYER, light_layer()], rng=np.random.default_rng(3))
    np.testing.assert_array_equal(rainy, again)
    np.testing.assert_array_equal(r, r_again)
    other, r_other = add_rain(clean, [DEFAULT_LAYER, light_layer()], rng=4)
    assert not np.array_equal(r, r_other)
    assert r.dtype == np.float32 and r.shape == (64, 80) and r.min() >= 0 and r.max() > 100
    expect = np.round(np.clip(clean.astype(np.float32) + r[..., None], 0, 255)).astype(np.uint8)
    np.testing.assert_array_equal(rainy, expect)
    assert (rainy == 255).any()  # the clip is exercised
    f, rf = add_rain(clean.astype(np.float32), [DEFAULT_LAYER], rng=9)
    assert f.dtype == np.float32
    np.testing.assert_allclose(f, np.clip(clean + rf[..., None], 0, 255), atol=1e-4)
    g, rg = add_rain(clean[..., 0], [DEFAULT_LAYER], rng=9)  # gray: same rain
    np.testing.assert_array_equal(rg, rf)
    assert image_seed(3, 'a.png') == image_seed(3, 'a.png') != image_seed(3, 'b.png')
    assert image_rng(3, 'a.png').random() == np.random.default_rng(image_seed(3, 'a.png')).random()


def test_layer_ranges_are_checked():
    with pytest.raises(ConfigError) as e:
        check_layer(RainLayer(length=(40, 20)))
    assert str(e.value) == 'length 40 20: expected 1 <= L_MIN <= L_MAX <= 1000 (pixels)'
    with pytest.raises(ConfigError) as e:
        check_layer(RainLayer(angle=95), names={'angle': '--angle'})
    assert str(e.value) == '--angle 95: expected -80 <= angle <= 80 (degrees from vertical)'
    with pytest.raises(ConfigError) as e:
        rain_layer((8, 8), [DEFAULT_LAYER, RainLayer(intensity=0)])
    assert str(e.value) == 'layers[1].intensity 0: expected 0 < intensity <= 1 (a fraction of 255)'
    with pytest.raises(ConfigError) as e:
        rain_layer((8, 8), [DEFAULT_LAYER], haze=0.7)
    assert str(e.value) == 'haze 0.7: expected 0 <= haze <= 0.5 (a fraction of 255)'


# ----------------------------------------------------------------------------------- make_synthetic_rain.py

def write_clean(folder, names, size=(30, 26), seed=0):
    """Smooth random colour images (``size`` = (h, w)) named ``names``; returns the decoded images by stem."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    out = {}
    for n in names:
        img = cv2.resize(rng.integers(0, 256, (6, 6, 3)).astype(np.uint8), size[::-1], interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(os.path.join(folder, n), img)
        out[os.path.splitext(n)[0]] = cv2.imread(os.path.join(folder, n))
    return out


def test_make_synthetic_rain_writes_the_paired_layout(tmp_path):
    clean = write_clean(tmp_path / 'in', ['a.png', 'b.jpg'])
    (tmp_path / 'in' / 'notes.txt').write_text('not an image')
    root = tmp_path / 'set'
    record = cli_main(RAIN)(['--input', str(tmp_path / 'in'), '--output', str(root), '--seed', '7', '--angle', '-15',
                             '--angle-jitter', '2', '--length', '5', '9', '--density', '4000', '--intensity', '0.7',
                             '--light-layer', '--haze', '0.05'])
    assert sorted(str(p.relative_to(root)) for p in root.rglob('*') if p.is_file()) == [
        'clean/a.png', 'clean/b.png', 'rain_params.json', 'rainy/a.png', 'rainy/b.png']
    params = json.loads((root / 'rain_params.json').read_text())
    assert params == record
    main = RainLayer(density=4000, length=(5, 9), angle=-15, angle_jitter=2, intensity=0.7)
    assert params['layers'] == [main.to_dict(), light_layer(main).to_dict()] and params['seed'] == 7
    for stem in ('a', 'b'):
        entry = params['images'][f'{stem}.png']
        assert entry['seed'] == image_seed(7, f'{stem}.png') and entry['haze'] == 0.05
        assert entry['source'] == f'{stem}.{"png" if stem == "a" else "jpg"}' and (entry['height'], entry['width']) \
            == (30, 26)
        gt = cv2.imread(str(root / 'clean' / f'{stem}.png'))
        np.testing.assert_array_equal(gt, clean[stem])  # the GT is the decoded input
        r = rain_layer(gt.shape, [main, light_layer(main)], 0.05, image_rng(7, f'{stem}.png'))
        np.testing.assert_array_equal(cv2.imread(str(root / 'rainy' / f'{stem}.png')),
                                      np.round(np.clip(gt + r[..., None], 0, 255)).astype(np.uint8))
        assert entry['streaks'][0] > 0 and entry['rain_mean'] == pytest.approx(float(r.mean()), abs=1e-4)


def test_make_synthetic_rain_bad_input(tmp_path, monkeypatch):
    main = cli_main(RAIN)
    write_clean(tmp_path / 'in', ['a.png'])
    (tmp_path / 'empty').mkdir()
    out = ['--output', str(tmp_path / 'out')]
    before = tree_snapshot(tmp_path)
    cases = [
        (['--input', str(tmp_path / 'in'), '--length', '40', '20'],
         '--length 40 20: expected 1 <= L_MIN <= L_MAX <= 1000 (pixels)'),
        (['--input', str(tmp_path / 'in'), '--density', '-1'],
         '--density -1: expected 0 <= density <= 100000 (streaks per megapixel)'),
        (['--input', str(tmp_path / 'in'), '--angle-jitter', '50'],
         '--angle-jitter 50: expected 0 <= jitter <= 45 (degrees)'),
        (['--input', str(tmp_path / 'in'), '--haze', '0.9'],
         '--haze 0.9: expected 0 <= haze <= 0.5 (a fraction of 255)'),
        (['--input', str(tmp_path / 'in'), '--seed', '-3'], '--seed -3: expected an integer >= 0'),
        (['--input', str(tmp_path / 'nope')], f'--input {tmp_path / "nope"}: no such folder'),
        (['--input', str(tmp_path / 'empty')],
         f'--input {tmp_path / "empty"}: no images in it (.png, .jpg, ...; sub-folders are not searched)'),
    ]
    for argv, msg in cases:
        assert user_error_in_process(main, argv + out, tmp_path, monkeypatch) == msg
    (tmp_path / 'in' / 'a.jpg').write_bytes((tmp_path / 'in' / 'a.png').read_bytes())
    assert user_error_in_process(main, ['--input', str(tmp_path / 'in'), *out], tmp_path, monkeypatch) == \
        f'--input {tmp_path / "in"}: a.jpg and a.png would both be written as a.png'
    (tmp_path / 'in' / 'a.jpg').unlink()
    (tmp_path / 'in' / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n broken')
    msg = user_error_in_process(main, ['--input', str(tmp_path / 'in'), *out], tmp_path, monkeypatch)
    assert str(tmp_path / 'in' / 'broken.png') in msg and '\n' not in msg
    (tmp_path / 'in' / 'broken.png').unlink()
    assert tree_snapshot(tmp_path) == before  # nothing written by any of them
    main(['--input', str(tmp_path / 'in'), *out])
    assert user_error_in_process(main, ['--input', str(tmp_path / 'in'), *out], tmp_path, monkeypatch) == \
        (f'--output {tmp_path / "out"}: already holds a set (rainy/a.png, 3 file(s) in all); choose another folder '
         'or pass --overwrite')
    main(['--input', str(tmp_path / 'in'), *out, '--overwrite', '--seed', '1'])
    assert json.loads((tmp_path / 'out' / 'rain_params.json').read_text())['seed'] == 1


# ------------------------------------------------------------------------------------ prepare_derain_sets.py

def test_prepare_derain_sets_converts_the_released_layouts(tmp_path, monkeypatch):
    main = cli_main(PREPARE)
    imgs = write_clean(tmp_path / 'src', [f'{i}.png' for i in range(6)], size=(16, 20))
    pics = list(imgs.values())
    # Rain100L: flat rain-/norain- names, and the rain/X2/norain-XXXx2 + norain/ folders variant
    rel = tmp_path / 'Rain100L'
    for name, img in (('rain-001.png', pics[0]), ('norain-001.png', pics[1]), ('rain/X2/norain-002x2.png', pics[2]),
                      ('norain/norain-002.png', pics[3])):
        os.makedirs((rel / name).parent, exist_ok=True)
        cv2.imwrite(str(rel / name), img)
    res = main(['--set', 'Rain100L', '--input', str(rel), '--output', str(tmp_path / 'out' / 'Rain100L')])
    assert res['pairs'] == 2 and res['names'] == ['rain-001.png', 'norain-002x2.png']
    out = tmp_path / 'out' / 'Rain100L'
    np.testing.assert_array_equal(cv2.imread(str(out / 'rainy' / 'rain-001.png')), pics[0])
    np.testing.assert_array_equal(cv2.imread(str(out / 'clean' / 'rain-001.png')), pics[1])
    np.testing.assert_array_equal(cv2.imread(str(out / 'rainy' / 'norain-002x2.png')), pics[2])
    np.testing.assert_array_equal(cv2.imread(str(out / 'clean' / 'norain-002x2.png')), pics[3])
    # SPA-Data: <id>rain / <id>_gt suffixes, named by key
    spa = tmp_path / 'spa'
    spa.mkdir()
    for name, img in (('0001rain.png', pics[0]), ('0001gt.png', pics[1]), ('0002_rain.png', pics[2]),
                      ('0002_gt.png', pics[3])):
        cv2.imwrite(str(spa / name), img)
    res = main(['--set', 'SPA-Data', '--input', str(spa), '--output', str(tmp_path / 'out' / 'SPA'), '--names', 'key'])
    assert res['names'] == ['0001.png', '0002.png']
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / 'out' / 'SPA' / 'clean' / '0002.png')), pics[3])
    # Rain800: side-by-side JPEG-free test (PNG), GT on the left by default
    r800 = tmp_path / 'r800'
    r800.mkdir()
    cv2.imwrite(str(r800 / '1.png'), np.concatenate([pics[4], pics[5]], axis=1))
    main(['--set', 'Rain800', '--input', str(r800), '--output', str(tmp_path / 'out' / 'Rain800')])
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / 'out' / 'Rain800' / 'clean' / '1.png')), pics[4])
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / 'out' / 'Rain800' / 'rainy' / '1.png')), pics[5])
    # errors: an unpaired file, a size mismatch; nothing written
    (spa / '0003rain.png').write_bytes((spa / '0001rain.png').read_bytes())
    before = tree_snapshot(tmp_path)
    msg = user_error_in_process(main, ['--set', 'SPA-Data', '--input', str(spa), '--output', str(tmp_path / 'x')],
                                tmp_path, monkeypatch)
    assert msg == f'--input {spa}: 0003rain.png has no clean partner (1 unpaired file(s))'
    cv2.imwrite(str(spa / '0003gt.png'), pics[0][:8])
    msg = user_error_in_process(main, ['--set', 'SPA-Data', '--input', str(spa), '--output', str(tmp_path / 'x')],
                                tmp_path, monkeypatch)
    assert msg == (f'{spa / "0003rain.png"}: 20x16 (WxH), but its clean partner {spa / "0003gt.png"} is 20x8')
    before = {k: v for k, v in before.items() if not k.startswith('spa')}
    assert {k: v for k, v in tree_snapshot(tmp_path).items() if not k.startswith('spa')} == before


# --------------------------------------------------------------------------- test.py at scale 1 + Table 1

@pytest.fixture(scope='module')
def derain_run(tmp_path_factory):
    """A synthetic Rain12 (3 pairs, 50x46: not a multiple of 4) made by the script, a tiny random RRDBNet x1
    checkpoint, and test.py run on it with options/test_derain_x1.yml."""
    import torch

    from desra.archs.rrdbnet_arch import RRDBNet

    root = tmp_path_factory.mktemp('derain')
    write_clean(root / 'clean_src', ['im0.png', 'im1.png', 'im2.png'], size=(50, 46))
    cli_main(RAIN)(['--input', str(root / 'clean_src'), '--output', str(root / 'datasets' / 'derain' / 'Rain12')])
    torch.manual_seed(0)
    torch.save({'params_ema': RRDBNet(3, 3, scale=1, num_feat=8, num_block=1, num_grow_ch=4).state_dict()},
               root / 'tiny_x1.pth')
    cwd = os.getcwd()
    os.chdir(root)
    try:
        rows = cli_main('test.py')(['-opt', os.path.join(REPO, 'options', 'test_derain_x1.yml'), '--force_yml',
                                    f'network_g={TINY_X1}', f'path:pretrain_network_g={root / "tiny_x1.pth"}',
                                    'datasets:test_1:name=Rain12', 'num_gpu=0', 'name=tiny_derain',
                                    'datasets:test_1:dataroot_gt=datasets/derain/Rain12/clean',
                                    'datasets:test_1:dataroot_lq=datasets/derain/Rain12/rainy'])
    finally:
        os.chdir(cwd)
    return root, rows


def test_test_py_at_scale_1_on_the_rainy_clean_layout(derain_run):
    root, rows = derain_run
    assert [r['dataset'] for r in rows] == ['Rain12'] and rows[0]['images'] == 3
    results = root / 'results' / 'tiny_derain'
    table = (results / 'metrics.md').read_text()
    assert table.startswith('| dataset | images | psnr (↑) | ssim (↑) |') and '| Rain12 | 3 | ' in table
    vis = results / 'visualization' / 'Rain12'
    assert sorted(os.listdir(vis)) == ['im0_tiny_derain.png', 'im1_tiny_derain.png', 'im2_tiny_derain.png']
    srs = [cv2.imread(str(vis / f'im{i}_tiny_derain.png')) for i in range(3)]
    gts = [cv2.imread(str(root / 'datasets' / 'derain' / 'Rain12' / 'clean' / f'im{i}.png')) for i in range(3)]
    assert all(s.shape == g.shape == (50, 46, 3) for s, g in zip(srs, gts))  # scale 1: same size as the input
    assert rows[0]['psnr'] == pytest.approx(np.mean([calculate_psnr(s, g, 0, test_y_channel=True)
                                                     for s, g in zip(srs, gts)]), abs=1e-9)


def _cell(report, metric, set_name, column):
    section = report.split(f'## {metric} ')[1].split('## ')[0]
    row = next(line for line in section.splitlines() if line.startswith(f'| {set_name} |'))
    return row.strip('|').split('|')[column + 1].strip()


def test_derain_table_prints_paper_beside_ours(derain_run, tmp_path, monkeypatch, capsys):
    root, rows = derain_run
    vis = root / 'results' / 'tiny_derain' / 'visualization'
    out = tmp_path / 'report'
    monkeypatch.chdir(tmp_path)
    result = cli_main(TABLE)(['--outputs', f'VRGNet={vis}', '--datasets', str(root / 'datasets' / 'derain'),
                              '--metrics', 'PSNR', 'SSIM', '--with-input', '--out', str(out)])
    printed = capsys.readouterr().out
    report = (out / 'derain_table1.md').read_text()
    assert report in printed and json.loads((out / 'derain_table1.json').read_text())['paper'] == result['paper']
    assert result['settings']['sets'] == ['Rain12']  # the other sets are not there: skipped
    res = result['models']['VRGNet']['results']['Rain12']
    srs = [cv2.imread(str(vis / 'Rain12' / f'im{i}_tiny_derain.png')) for i in range(3)]
    gts = [cv2.imread(str(root / 'datasets' / 'derain' / 'Rain12' / 'clean' / f'im{i}.png')) for i in range(3)]
    rainy = [cv2.imread(str(root / 'datasets' / 'derain' / 'Rain12' / 'rainy' / f'im{i}.png')) for i in range(3)]
    assert res['PSNR'] == pytest.approx(np.mean([calculate_psnr(s, g, 0, test_y_channel=True)
                                                 for s, g in zip(srs, gts)]), abs=1e-9)
    assert res['SSIM'] == pytest.approx(np.mean([calculate_ssim(s, g, 0, test_y_channel=True)
                                                 for s, g in zip(srs, gts)]), abs=1e-9)
    assert res['PSNR'] == pytest.approx(rows[0]['psnr'], abs=1e-9)  # test.py's table uses the same convention
    inp = result['models']['rainy input']['results']['Rain12']
    assert inp['PSNR'] == pytest.approx(np.mean([calculate_psnr(r, g, 0, test_y_channel=True)
                                                 for r, g in zip(rainy, gts)]), abs=1e-9)
    # columns: rainy input (ours) | VRGNet (ours) | paper (VRGNet) | Δ
    for metric, dec in (('PSNR', 2), ('SSIM', 3)):
        paper = PAPER_TABLE1[metric]['Rain12']['VRGNet']
        assert _cell(report, metric, 'Rain12', 0) == '3'
        assert _cell(report, metric, 'Rain12', 1) == f'{inp[metric]:.{dec}f}'
        assert _cell(report, metric, 'Rain12', 2) == f'{res[metric]:.{dec}f}'
        assert _cell(report, metric, 'Rain12', 3) == f'{paper:.{dec}f}'
        assert _cell(report, metric, 'Rain12', 4) == f'{res[metric] - paper:+.{dec}f}'
    assert '35.28' in report and '0.957' in report and 'paper (VRGNet)' in report and '## LPIPS' not in report
    assert 'Rain12: 3 image(s) here; the released test set has 12' in report


def test_derain_table_lpips_and_row_matching(derain_run, perceptual_files, tmp_path, monkeypatch):
    root, _ = derain_run
    f = perceptual_files
    monkeypatch.setenv('DESRA_ALEXNET_WEIGHTS', str(f['alex']))
    monkeypatch.setenv('DESRA_LPIPS_ALEX_HEADS', str(f['heads_alex']))
    monkeypatch.chdir(tmp_path)
    data = root / 'datasets' / 'derain'
    # the rainy inputs as "outputs" of two labels: a paper row by another spelling, and one via --compare-with
    outputs = tmp_path / 'outs'
    os.makedirs(outputs / 'Rain12')
    for i in range(3):
        (outputs / 'Rain12' / f'im{i}.png').write_bytes((data / 'Rain12' / 'rainy' / f'im{i}.png').read_bytes())
    result = cli_main(TABLE)(['--outputs', f'semi derain + ours={outputs}', f'mine={outputs}', '--datasets', str(data),
                              '--sets', 'Rain12', '--compare-with', 'mine=derain_cyclegan', '--color', 'bgr',
                              '--device', 'cpu', '--out', str(tmp_path / 'rep')])
    models = result['models']
    assert models['semi derain + ours']['row'] == 'Semi-Derain+Ours' and models['mine']['row'] == 'DerainCycleGAN'
    gts = [cv2.imread(str(data / 'Rain12' / 'clean' / f'im{i}.png')) for i in range(3)]
    outs = [cv2.imread(str(outputs / 'Rain12' / f'im{i}.png')) for i in range(3)]
    res = models['mine']['results']['Rain12']
    assert res['LPIPS'] == pytest.approx(np.mean([calculate_lpips(o, g, backbone=f['alex'], heads=f['heads_alex'],
                                                                  device='cpu') for o, g in zip(outs, gts)]), rel=1e-5)
    assert res['PSNR'] == pytest.approx(np.mean([calculate_psnr(o, g, 0) for o, g in zip(outs, gts)]), abs=1e-9)
    report = (tmp_path / 'rep' / 'derain_table1.md').read_text()
    # columns: images | semi derain + ours (ours) | paper | Δ | mine (ours) | paper (DerainCycleGAN) | Δ
    assert _cell(report, 'LPIPS', 'Rain12', 2) == f'{PAPER_TABLE1["LPIPS"]["Rain12"]["Semi-Derain+Ours"]:.4f}'
    assert _cell(report, 'LPIPS', 'Rain12', 5) == '0.0703'  # DerainCycleGAN's Rain12 LPIPS
    assert _cell(report, 'LPIPS', 'Rain12', 6) == f'{res["LPIPS"] - 0.0703:+.4f}'
    assert 'BGR channels (averaged), crop 0' in report
    assert result['paper']['mine']['Rain12'] == {'PSNR': 34.44, 'SSIM': 0.952, 'LPIPS': 0.0703}


def test_paper_rows_and_figures():
    assert PAPER_TABLE1['rows'][3:] == ('DerainCycleGAN', 'VRGNet', 'SemiDerainGAN', 'CycleGAN+Ours', 'VRGNet+Ours',
                                        'Semi-Derain+Ours')
    assert PAPER_TABLE1['PSNR']['SPA-Data']['VRGNet+Ours'] == 35.92
    assert PAPER_TABLE1['SSIM']['Rain800']['VRGNet+Ours'] == 0.889
    assert PAPER_TABLE1['LPIPS']['Rain100L']['DerainCycleGAN'] == 0.0734
    assert PAPER_TABLE1['LPIPS']['SPA-Data']['Semi-Derain+Ours'] == 0.0502
    for label, row in (('vrgnet', 'VRGNet'), ('Semi-DerainGAN', 'SemiDerainGAN'), ('cyclegan + ours', 'CycleGAN+Ours'),
                       ('DerainCycleGAN+Ours', 'CycleGAN+Ours'), ('SemiDerainGAN+Ours', 'Semi-Derain+Ours'),
                       ('VRGNet_Ours', None), ('mine', None)):
        assert paper_row(label) == row, label


def test_derain_table_bad_input(derain_run, tmp_path, monkeypatch):
    root, _ = derain_run
    main = cli_main(TABLE)
    data = root / 'datasets' / 'derain'
    outs = tmp_path / 'outs'
    os.makedirs(outs / 'Rain12')
    for i in (0, 1):
        (outs / 'Rain12' / f'im{i}.png').write_bytes((data / 'Rain12' / 'rainy' / f'im{i}.png').read_bytes())
    base = ['--datasets', str(data), '--metrics', 'PSNR', 'SSIM', '--out', str(tmp_path / 'rep')]
    before = tree_snapshot(tmp_path)
    msg = user_error_in_process(main, ['--outputs', f'VRGNet={outs}', *base], tmp_path, monkeypatch)
    assert msg == (f'{outs / "Rain12"}: no derained image for {data / "Rain12" / "clean" / "im2.png"} (expected '
                   'im2.png or im2_<suffix>.png)')
    cv2.imwrite(str(outs / 'Rain12' / 'im2_x.png'), np.zeros((50, 44, 3), np.uint8))
    msg = user_error_in_process(main, ['--outputs', f'VRGNet={outs}', *base], tmp_path, monkeypatch)
    assert msg == (f'{outs / "Rain12" / "im2_x.png"}: 44x50 (WxH), but its GT {data / "Rain12" / "clean" / "im2.png"} '
                   'is 46x50')
    cases = [
        (['--outputs', f'VRGNet={outs}', '--sets', 'Rain800'],
         f'Rain800: {data / "Rain800" / "clean"} does not exist (layout: datasets/README.md, "Deraining")'),
        (['--outputs', f'VRGNet={tmp_path / "nope"}'], f'--outputs VRGNet={tmp_path / "nope"}: no such folder'),
        (['--outputs', 'VRGNet'], "--outputs 'VRGNet': expected LABEL=FOLDER"),
        (['--outputs', f'm={outs}', '--compare-with', 'm=PReNet'],
         "--compare-with 'PReNet': not a row of the paper's Table 1; rows: DSC, GMM, DDN, DerainCycleGAN, VRGNet, "
         "SemiDerainGAN, CycleGAN+Ours, VRGNet+Ours, Semi-Derain+Ours"),
        (['--outputs', f'm={outs}', '--compare-with', 'n=VRGNet'], "--compare-with n=VRGNet: no --outputs label 'n'"),
        (['--outputs', f'm={tmp_path}'],
         f'--outputs m={tmp_path}: no Rain12/ folder of derained images in it ({tmp_path / "Rain12"}); choose the '
         'sets with --sets'),
    ]
    for argv, expected in cases:
        assert user_error_in_process(main, argv + base, tmp_path, monkeypatch) == expected
    # a missing LPIPS file is reported before anything is read
    monkeypatch.setenv('DESRA_LPIPS_ALEX_HEADS', str(tmp_path / 'missing.safetensors'))
    monkeypatch.setenv('DESRA_ALEXNET_WEIGHTS', str(tmp_path / 'missing_alex.pth'))
    msg = user_error_in_process(main, ['--outputs', f'VRGNet={outs}', '--datasets', str(data), '--metrics', 'LPIPS',
                                       '--out', str(tmp_path / 'rep')], tmp_path, monkeypatch)
    assert msg.startswith(f'metrics.LPIPS: DESRA_ALEXNET_WEIGHTS={tmp_path / "missing_alex.pth"}: file not found')
    after = tree_snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k != 'outs/Rain12/im2_x.png'} == before  # no report written
