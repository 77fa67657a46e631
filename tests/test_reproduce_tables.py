"""scripts/reproduce_tables.py and desra.pipelines.reproduce on a synthetic data set in the released layout."""
import json
import os
import re
import shutil

import cv2
import numpy as np
import pytest
from conftest import run_script

SCRIPT = 'scripts/reproduce_tables.py'
SIZE, PATCH = 72, 40          # SR size and artifact patch side: DeSRA's dilation (3 x 5x5) grows a detection by
                              # about 6 px per side, so the patch must be large for a high IoU at this size
FAST = ['--min-area', '20', '--niqe-thresholds', '5', '10', '--niqe-window', '32', '--niqe-stride', '16']
# (sub-folder, name) of each method's images: the released two-level root/<sub>/<img> layout
IMAGES = [('n01', 'img_a'), ('n01', 'img_b'), ('n02', 'img_c'), ('n02', 'img_d')]


def _smooth(rng):
    """A smooth MSE-SR-like image: gradients plus a low-frequency wave (little local variance)."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    a, b, c = rng.uniform(0.3, 1.2, 3)
    ph = rng.uniform(0, 6.28)
    img = np.stack([50 + a * xx + 10 * np.sin(yy / 15 + ph), 70 + b * yy, 110 + c * (xx + yy) / 2], -1)
    return np.clip(img, 0, 255).round().astype(np.uint8)


def make_dataset(root, methods=('RealESRGAN', 'LDL'), released=('RealESRGAN',), seed=0):
    """``root/<method>/{MSE-SR,GAN-SR,GT-Mask,LR}/<sub>/<img>.png`` (+ DeSRA-Mask for ``released``)."""
    rng = np.random.default_rng(seed)
    for method in methods:
        for sub, name in IMAGES:
            mse = _smooth(rng)
            y, x = (int(v) for v in rng.integers(6, SIZE - PATCH - 6, 2))
            gan = mse.astype(np.float64)
            gan[y:y + PATCH, x:x + PATCH] += rng.normal(0, 35, (PATCH, PATCH, 3))
            gan = np.clip(gan, 0, 255).round().astype(np.uint8)
            gt = np.zeros((SIZE, SIZE), np.uint8)
            gt[y:y + PATCH, x:x + PATCH] = 255
            files = {'MSE-SR': mse, 'GAN-SR': gan, 'GT-Mask': gt,
                     'LR': cv2.resize(mse, (SIZE // 4, SIZE // 4), interpolation=cv2.INTER_AREA)}
            if method in released:  # the released masks: official (H-10) x (W-10) crop
                files['DeSRA-Mask'] = gt[5:-5, 5:-5]
            for folder, img in files.items():
                d = os.path.join(root, method, folder, sub)
                os.makedirs(d, exist_ok=True)
                cv2.imwrite(os.path.join(d, name + '.png'), img)
    return str(root)


def make_finetuned(data_root, out_root, methods=('RealESRGAN', 'LDL')):
    """Fine-tuned outputs whose artifacts are gone: GAN-SR = MSE-SR."""
    for method in methods:
        shutil.copytree(os.path.join(data_root, method, 'MSE-SR'), os.path.join(out_root, method, 'GAN-SR'))
    return str(out_root)


def _cells(report, label, after=None):
    """The cells of the first table row ``| label | ...`` (after the line containing ``after``)."""
    text = report if after is None else report[report.index(after):]
    m = re.search(r'^\| ' + re.escape(label) + r' \|(.*)\|$', text, re.MULTILINE)
    assert m, f'no row {label!r} in\n{text}'
    return [c.strip() for c in m.group(1).split('|')]


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp('desra_data'))


@pytest.fixture(scope='module')
def full_run(dataset, tmp_path_factory):
    tmp = tmp_path_factory.mktemp('reproduce')
    ft = make_finetuned(dataset, tmp / 'finetuned')
    out = tmp / 'out'
    r = run_script(SCRIPT, ['--data', dataset, '--methods', 'RealESRGAN', 'LDL', '--out', str(out),
                            '--finetuned-root', ft, *FAST], cwd=str(tmp))
    return r, out


def test_tables_against_paper(full_run):
    r, out = full_run
    assert r.returncode == 0, r.stderr
    rep = r.stdout
    assert '| Method | IoU (ours) | IoU (paper) | Δ | Precision (ours) | Precision (paper) | Δ | Recall (ours) ' \
           '| Recall (paper) | Δ |' in rep
    assert 'Table 1 — artifact detection on Real-ESRGAN' in rep and 'Table 2 — artifact detection on LDL' in rep
    # no SegFormer / class file: said so
    assert 'every class weight 1' in rep
    assert 'PAL4Inpainting' in rep
    t1, t2 = rep.index('Table 1 —'), rep.index('Table 2 —')
    for after, paper in (('Table 1 —', ('51.1', '0.7055', '0.6081')), ('Table 2 —', ('44.5', '0.6087', '0.5335'))):
        cells = _cells(rep, 'DeSRA-det', after)
        assert cells[1] == paper[0] and cells[4] == paper[1] and cells[7] == paper[2]
        ours_iou = float(cells[0])
        assert ours_iou > 50
        for i in (0, 3, 6):  # Δ = ours - paper, as printed
            digits = 1 if i == 0 else 4
            assert float(cells[i + 2]) == pytest.approx(round(float(cells[i]) - float(cells[i + 1]), digits), abs=1e-9)
    # LDL* rows carry the paper's figures
    assert _cells(rep, 'LDL* (threshold=0.005)', 'Table 1 —')[1] == '36.2'
    assert _cells(rep, 'LDL* (threshold=0.001)', 'Table 2 —')[1] == '31.1'
    # NIQE: the best threshold of the sweep is named
    assert re.search(r'^\| NIQE \(t=(5|10)\) \| .* \| 2\.9 \|', rep[t1:t2], re.MULTILINE)
    # released masks for RealESRGAN only (= the GT here: IoU 100)
    assert float(_cells(rep, 'DeSRA-Mask (released)', 'Table 1 —')[0]) == pytest.approx(100.0)
    assert '| DeSRA-Mask (released) |' not in rep[t2:]
    assert 'LDL: no DeSRA-Mask folder' in rep

    md, js = out / 'tables.md', out / 'tables.json'
    assert md.is_file() and js.is_file()
    assert '| DeSRA-det |' in md.read_text()
    data = json.loads(js.read_text())
    m0 = data['methods'][0]
    assert m0['method'] == 'RealESRGAN' and m0['table'] == 'Table 1' and m0['num_images'] == 4
    det = next(row for row in m0['rows'] if row['key'] == 'desra_det')
    assert det['paper']['iou'] == 51.1 and det['ours']['iou'] > 0.5
    assert det['delta']['iou'] == pytest.approx(round(round(100 * det['ours']['iou'], 1) - 51.1, 1))
    assert len(m0['niqe_sweep']) == 2 and data['settings']['min_area'] == 20


def test_table3_removal(full_run):
    r, out = full_run
    assert r.returncode == 0, r.stderr
    rep = r.stdout
    t3 = rep[rep.index('## Table 3'):]
    for display, paper_iou in (('Real-ESRGAN', '12.9'), ('LDL', '13.9')):
        cells = _cells(t3, f'{display}-DeSRA')
        assert cells[0] == '0.0' and cells[1] == paper_iou    # artifacts removed: nothing detected
        assert cells[3] == '100.00%' and cells[4] in ('75.43%', '74.97%')
        assert cells[6] == '0.00%' and cells[7] == '0.00%'
        assert float(cells[5]) == pytest.approx(100.0 - float(cells[4].rstrip('%')))
        assert float(_cells(t3, display)[0]) > 50          # before fine-tuning: the DeSRA-det IoU
    data = json.loads((out / 'tables.json').read_text())
    ra = data['methods'][1]['table3']['removal_addition']
    assert ra['removal_rate'] == 1.0 and ra['num_gt_regions'] == 4 and ra['addition_rate'] == 0.0


def test_missing_gt_folder(dataset, tmp_path):
    bad = tmp_path / 'data'
    shutil.copytree(os.path.join(dataset, 'LDL'), bad / 'LDL')
    shutil.rmtree(bad / 'LDL' / 'GT-Mask')
    r = run_script(SCRIPT, ['--data', str(bad), '--methods', 'LDL', '--out', str(tmp_path / 'o'), *FAST],
                   cwd=str(tmp_path))
    assert r.returncode == 2
    assert 'GT-Mask folder does not exist' in r.stderr and str(bad / 'LDL' / 'GT-Mask') in r.stderr
    assert 'Traceback' not in r.stderr
    assert not (tmp_path / 'o' / 'tables.md').exists()

    r = run_script(SCRIPT, ['--data', str(bad), '--methods', 'SwinIR', *FAST], cwd=str(tmp_path))
    assert r.returncode == 2 and 'method folder does not exist' in r.stderr and 'SwinIR' in r.stderr

    empty = tmp_path / 'finetuned'
    empty.mkdir()
    r = run_script(SCRIPT, ['--data', dataset, '--methods', 'LDL', '--finetuned-root', str(empty), *FAST],
                   cwd=str(tmp_path))
    assert r.returncode == 2 and 'fine-tuned GAN-SR folder does not exist' in r.stderr
    assert str(empty / 'LDL' / 'GAN-SR') in r.stderr


def test_gan_without_gt_twin(dataset, tmp_path):
    bad = tmp_path / 'data'
    shutil.copytree(os.path.join(dataset, 'LDL'), bad / 'LDL')
    os.remove(bad / 'LDL' / 'GT-Mask' / 'n02' / 'img_d.png')
    args = ['--data', str(bad), '--methods', 'LDL', '--out', str(tmp_path / 'o'), *FAST]
    r = run_script(SCRIPT, args, cwd=str(tmp_path))
    assert r.returncode == 2 and 'no GT-Mask twin' in r.stderr and 'img_d' in r.stderr
    r = run_script(SCRIPT, args + ['--allow-missing', '--quiet'], cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    data = json.loads((tmp_path / 'o' / 'tables.json').read_text())
    assert data['methods'][0]['num_images'] == 3 and data['methods'][0]['skipped_images'] == ['n02/img_d']


def test_labelme_gt_and_rethreshold_equivalence(dataset, tmp_path, monkeypatch):
    """GT as LabelMe JSON gives the same numbers as PNG; masks re-thresholded from one map equal fresh calls."""
    import desra.detection.detectors  # noqa: F401
    from desra.detection.pipeline import read_sr_image
    from desra.pipelines.reproduce import ReproduceOptions, _Detectors, reproduce_tables
    from desra.registry import DETECTOR_REGISTRY

    data = tmp_path / 'data'
    shutil.copytree(os.path.join(dataset, 'LDL'), data / 'LDL')
    for sub, name in IMAGES:
        png = data / 'LDL' / 'GT-Mask' / sub / f'{name}.png'
        gt = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE)
        ys, xs = np.nonzero(gt)
        shape = {'label': 'artifact', 'shape_type': 'rectangle',
                 'points': [[int(xs.min()), int(ys.min())], [int(xs.max()), int(ys.max())]]}
        png.with_suffix('.json').write_text(json.dumps({'shapes': [shape], 'imageHeight': SIZE, 'imageWidth': SIZE}))
    kw = {'methods': ['LDL'], 'min_area': 20, 'niqe_thresholds': [5, 10, 20], 'niqe_window': 32, 'niqe_stride': 16}
    from desra.detection import baselines
    from desra.metrics import niqe
    calls = {'ldl': 0, 'niqe': 0}

    def counting(fn, key):
        def wrapped(*args, **kwargs):
            calls[key] += 1
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(baselines, 'ldl_star_map', counting(baselines.ldl_star_map, 'ldl'))
    monkeypatch.setattr(niqe, 'niqe_map', counting(niqe.niqe_map, 'niqe'))
    with_png = reproduce_tables(ReproduceOptions(data_root=str(data), **kw))
    assert calls == {'ldl': len(IMAGES), 'niqe': len(IMAGES)}   # one map per image, thresholded 3 times each
    for sub, name in IMAGES:
        os.remove(data / 'LDL' / 'GT-Mask' / sub / f'{name}.png')
    with_json = reproduce_tables(ReproduceOptions(data_root=str(data), **kw))
    assert [r['ours'] for r in with_png['methods'][0]['rows']] == [r['ours'] for r in with_json['methods'][0]['rows']]

    opts = ReproduceOptions(data_root=str(data), **kw)
    det = _Detectors(opts)
    mse = read_sr_image(str(data / 'LDL' / 'MSE-SR' / 'n01' / 'img_a.png'))
    gan = read_sr_image(str(data / 'LDL' / 'GAN-SR' / 'n01' / 'img_a.png'))
    for t, m in zip(det.ldl_thresholds, det.ldl_masks(mse, gan)):
        ref, _ = DETECTOR_REGISTRY.build({'type': 'ldl_star', 'threshold': t, 'min_area': 20}, 'd')(mse, gan)
        np.testing.assert_array_equal(m, ref)
    for t, m in zip(det.niqe_thresholds, det.niqe_masks(mse, gan)):
        ref, _ = DETECTOR_REGISTRY.build({'type': 'niqe', 'threshold': t, 'window': 32, 'stride': 16,
                                          'min_area': 20}, 'd')(mse, gan)
        np.testing.assert_array_equal(m, ref)


def test_help_documents_downloads():
    r = run_script(SCRIPT, ['--help'], cwd=os.getcwd())
    assert r.returncode == 0
    assert 'Google Drive' in r.stdout and 'datasets/DeSRA/<method>' in r.stdout
    assert 'SSIM_MSE_GAN_threshold.txt' in r.stdout and 'segformer' in r.stdout.lower()


def _class_file(path, idx):
    from desra.detection.ade20k import ADE20K_CLASSES

    path.write_text(''.join(f'{name}--{idx}\n' for name in sorted(ADE20K_CLASSES)))
    return str(path)


def test_segformer_and_class_weights(dataset, tmp_path):
    """With a (tiny, random) SegFormer and a class file the weights apply; weight-1 classes change nothing."""
    pytest.importorskip('transformers')
    from test_segmentation import randomize, tiny_config
    from transformers import SegformerForSemanticSegmentation

    from desra.pipelines.reproduce import ReproduceOptions, format_report, reproduce_tables

    folder = str(tmp_path / 'segformer')
    randomize(SegformerForSemanticSegmentation(tiny_config())).save_pretrained(folder)
    kw = {'data_root': dataset, 'methods': ['LDL'], 'min_area': 20, 'niqe_thresholds': [5],
          'niqe_window': 32, 'niqe_stride': 16, 'limit': 2}
    plain = reproduce_tables(ReproduceOptions(**kw))
    ones = reproduce_tables(ReproduceOptions(**kw, segmenter='segformer', segformer_model=folder, device='cpu',
                                             class_weights=_class_file(tmp_path / 'ones.txt', 0)))
    assert ones['semantics']['weights_used'] and ones['methods'][0]['detector_seconds']['segmenter'] > 0
    assert [r['ours'] for r in ones['methods'][0]['rows']] == [r['ours'] for r in plain['methods'][0]['rows']]
    report = format_report(ones)
    assert 'ones.txt with SegFormer' in report and 'every class weight 1' not in report

    # weight 20 for every class: S = clip(20 D, 0, 1) >= 0.7 everywhere on this data -> nothing detected
    heavy = reproduce_tables(ReproduceOptions(**kw, segmenter='segformer', segformer_model=folder, device='cpu',
                                              class_weights=_class_file(tmp_path / 'heavy.txt', 19)))
    det = next(r for r in heavy['methods'][0]['rows'] if r['key'] == 'desra_det')['ours']
    assert det['num_pred_regions'] == 0 and det['iou'] == 0.0
    # a class file without a segmenter cannot apply: said so, weights 1
    alone = reproduce_tables(ReproduceOptions(**kw, class_weights=_class_file(tmp_path / 'heavy.txt', 19)))
    assert not alone['semantics']['weights_used'] and 'given without a segmenter' in format_report(alone)
    assert [r['ours'] for r in alone['methods'][0]['rows']] == [r['ours'] for r in plain['methods'][0]['rows']]
