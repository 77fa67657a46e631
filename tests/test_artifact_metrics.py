"""Artifact metrics (IoU / region precision / recall / removal / addition) on masks built by hand."""
import json
import os

import cv2
import numpy as np
import pytest
from conftest import run_script

from desra.errors import DataError
from desra.metrics.artifact_metrics import (
    MaskMismatchError,
    artifact_metrics,
    load_mask,
    mask_iou,
    region_precision_counts,
    region_recall_counts,
    removal_addition_rates,
)

HERE = os.path.dirname(os.path.abspath(__file__))
LABELME = os.path.join(HERE, 'data', 'labelme_artifact.json')


def box(mask, r0, r1, c0, c1):
    """Set rows r0..r1, columns c0..c1 (inclusive)."""
    mask[r0:r1 + 1, c0:c1 + 1] = True
    return mask


def scene():
    """GT: G1 5x5 (25 px) and G2 5x10 (50 px). Prediction: P1 = G1; P2 5x8 (40 px) with 20 px inside G2
    (half of P2, 40 % of G2); P3 a 3x3 false blob."""
    gt = np.zeros((30, 40), bool)
    box(gt, 2, 6, 2, 6)
    box(gt, 10, 14, 20, 29)
    pred = np.zeros((30, 40), bool)
    box(pred, 2, 6, 2, 6)
    box(pred, 10, 14, 16, 23)
    box(pred, 20, 22, 30, 32)
    return pred, gt


# --------------------------------------------------------------------------------------------------
# Single-image metrics
# --------------------------------------------------------------------------------------------------

def test_single_image_counts_and_boundary():
    pred, gt = scene()
    assert mask_iou(pred, gt) == pytest.approx(45 / 104)  # |A|=74, |B|=75, |A∩B|=45
    assert region_precision_counts(pred, gt, p=0.5) == (2, 3)  # P2 is exactly half inside: >= counts
    assert region_precision_counts(pred, gt, p=0.5001) == (1, 3)
    assert region_recall_counts(pred, gt, p=0.5) == (1, 2)  # G2 only 40 % covered
    assert region_recall_counts(pred, gt, p=0.4) == (2, 2)
    # 0/255 uint8 and 0/1 int masks give the same numbers
    assert region_precision_counts(pred.astype(np.uint8) * 255, gt.astype(np.int64)) == (2, 3)
    assert mask_iou(pred.astype(np.uint8) * 255, np.dstack([gt * 255] * 3).astype(np.uint8)) == pytest.approx(45 / 104)


def test_eight_connectivity():
    pred = np.zeros((10, 10), bool)
    pred[5, 5] = pred[6, 6] = True  # touching at a corner: one region
    gt = np.zeros((10, 10), bool)
    gt[5, 5] = True
    assert region_precision_counts(pred, gt) == (1, 1)  # 1 of 2 pixels inside -> ratio 0.5 -> correct
    assert region_recall_counts(gt, pred) == (1, 1)
    pred2 = np.zeros((10, 10), bool)
    pred2[5, 5] = pred2[5, 7] = True  # a one-pixel gap: two regions
    assert region_precision_counts(pred2, gt) == (1, 2)


def test_empty_modes():
    z = np.zeros((8, 8), bool)
    assert mask_iou(z, z) == 1.0
    assert mask_iou(z, z, empty='zero') == 0.0
    assert mask_iou(z, z, empty='skip') is None
    assert mask_iou(z, ~z) == 0.0
    assert region_precision_counts(z, z) == (0, 0)
    with pytest.raises(ValueError, match='empty'):
        mask_iou(z, z, empty='nan')
    with pytest.raises(ValueError, match=r'\[0, 1\]'):
        region_recall_counts(z, z, p=1.5)


# --------------------------------------------------------------------------------------------------
# Data-set metrics
# --------------------------------------------------------------------------------------------------

def dataset():
    pred1, gt1 = scene()
    z = np.zeros((30, 40), bool)
    gt3 = box(z.copy(), 0, 9, 0, 9)
    return {'a': pred1, 'b': z, 'c': z}, {'a': gt1, 'b': z, 'c': gt3}


def test_artifact_metrics_pooled():
    preds, gts = dataset()
    r = artifact_metrics(preds, gts)
    assert r['iou'] == pytest.approx((45 / 104 + 1 + 0) / 3)
    assert r['precision'] == pytest.approx(2 / 3)
    assert r['recall'] == pytest.approx(1 / 3)  # G1 found; G2 and the GT of 'c' not
    assert (r['num_images'], r['num_pred_regions'], r['num_gt_regions']) == (3, 3, 3)
    assert [d['name'] for d in r['per_image']] == ['a', 'b', 'c']
    assert r['per_image'][0]['intersection'] == 45 and r['per_image'][0]['union'] == 104
    assert artifact_metrics(preds, gts, empty='skip')['iou'] == pytest.approx((45 / 104 + 0) / 2)
    assert artifact_metrics(preds, gts, empty='zero')['iou'] == pytest.approx((45 / 104) / 3)
    # lists are paired by position; the same numbers
    rl = artifact_metrics(list(preds.values()), list(gts.values()))
    assert rl['iou'] == r['iou'] and rl['precision'] == r['precision'] and rl['per_image'][2]['name'] == 2
    # nothing detected anywhere: precision undefined
    assert artifact_metrics([np.zeros((4, 4))], [np.ones((4, 4))])['precision'] is None


def test_name_matching_errors():
    preds, gts = dataset()
    del gts['a']
    preds['extra'] = preds['b']
    with pytest.raises(MaskMismatchError) as e:
        artifact_metrics(preds, gts)
    msg = str(e.value)
    assert 'without GT: a, extra' in msg
    assert isinstance(e.value, DataError) and isinstance(e.value, ValueError)
    with pytest.raises(MaskMismatchError, match='GT mask.*without prediction: only_gt'):
        artifact_metrics({}, {'only_gt': np.zeros((4, 4))})
    with pytest.raises(MaskMismatchError, match='2 prediction masks but 1 GT'):
        artifact_metrics([np.zeros((4, 4))] * 2, [np.zeros((4, 4))])


def test_crop():
    gt = np.zeros((20, 20), bool)
    box(gt, 0, 2, 0, 2)  # inside the 5 px border: cropped away
    box(gt, 8, 11, 8, 11)
    full = gt.copy()
    r = artifact_metrics([full], [gt], crop=5)
    assert r['num_gt_regions'] == 1 and r['num_pred_regions'] == 1 and r['iou'] == 1.0
    assert artifact_metrics([full], [gt])['num_gt_regions'] == 2
    # a prediction already (H-10) x (W-10): only the GT is cropped
    small = gt[5:15, 5:15].copy()
    r2 = artifact_metrics({'x': small}, {'x': gt}, crop=5)
    assert r2['iou'] == 1.0 and r2['per_image'][0]['union'] == 16
    with pytest.raises(MaskMismatchError, match=r"image x: prediction is 12x12 but GT is 20x20; with crop=5"):
        artifact_metrics({'x': np.zeros((12, 12))}, {'x': gt}, crop=5)
    with pytest.raises(ValueError, match=r'image x: prediction is 10x10 but GT is 20x20 .*crop=5'):
        artifact_metrics({'x': small}, {'x': gt})
    with pytest.raises(ValueError, match='too small'):
        artifact_metrics([np.zeros((8, 8))], [np.zeros((8, 8))], crop=4)


# --------------------------------------------------------------------------------------------------
# Removal / addition
# --------------------------------------------------------------------------------------------------

def after_scene():
    """GT: G1, G2, G3. After: a remnant inside G1; nothing at G2; a region 6/25 inside G3; a 4-px blob
    disjoint from every GT region."""
    gt = np.zeros((30, 40), bool)
    box(gt, 2, 6, 2, 6)
    box(gt, 10, 14, 20, 29)
    box(gt, 20, 24, 2, 6)
    after = np.zeros((30, 40), bool)
    box(after, 3, 4, 3, 4)
    box(after, 22, 26, 5, 9)
    box(after, 20, 21, 30, 31)
    return after, gt


def test_removal_addition():
    after, gt = after_scene()
    z = np.zeros((30, 40), bool)
    gt2 = box(z.copy(), 10, 12, 10, 12)
    afters, gts = {'i1': after, 'i2': z, 'i3': z}, {'i1': gt, 'i2': gt2, 'i3': z}
    r = removal_addition_rates(afters, gts)
    assert (r['num_gt_regions'], r['num_removed_regions']) == (4, 2)  # G2 and the GT of i2
    assert r['removal_rate'] == pytest.approx(0.5)
    assert r['removal_rate_image_mean'] == pytest.approx((1 / 3 + 1) / 2)  # i3 has no GT region
    assert r['addition_rate'] == pytest.approx(1 / 3)  # only the disjoint blob of i1 is new
    assert (r['num_after_regions'], r['num_added_regions']) == (3, 1)
    assert r['pixel_addition_rate'] == pytest.approx(1 / 3)
    p1 = r['per_image'][0]
    assert p1 == {'name': 'i1', 'gt_regions': 3, 'removed_regions': 1, 'removal_rate': pytest.approx(1 / 3),
                  'after_regions': 3, 'added_regions': 1, 'new_pixels': 4 + 19, 'has_added': True}
    assert r['per_image'][2]['removal_rate'] is None
    # the partial region (6/25 inside G3) is added when p_add > 0.24
    assert removal_addition_rates(afters, gts, p_add=0.5)['num_added_regions'] == 2
    assert removal_addition_rates(afters, gts, p_add=0.24)['num_added_regions'] == 1
    # the blob has 4 px: min_area 5 drops it
    r5 = removal_addition_rates(afters, gts, min_area=5)
    assert r5['addition_rate'] == 0 and r5['num_added_regions'] == 0 and r5['pixel_addition_rate'] == pytest.approx(1 / 3)
    # a detection entirely inside the GT: nothing new, nothing removed
    r0 = removal_addition_rates([gt], [gt])
    assert r0['removal_rate'] == 0 and r0['addition_rate'] == 0 and r0['pixel_addition_rate'] == 0
    with pytest.raises(MaskMismatchError, match='after mask.*without GT: i4'):
        removal_addition_rates({**afters, 'i4': z}, gts)


# --------------------------------------------------------------------------------------------------
# Reading masks
# --------------------------------------------------------------------------------------------------

def expected_labelme():
    m = np.zeros((40, 60), np.uint8)
    cv2.fillPoly(m, [np.array([[10, 6], [31, 5], [20, 25]], np.int32)], 1)  # vertices rounded half up
    cv2.rectangle(m, (40, 28), (55, 36), 1, thickness=-1)
    return m.astype(bool)


def test_labelme_fixture():
    m = load_mask(LABELME)
    assert m.dtype == bool and m.shape == (40, 60)
    np.testing.assert_array_equal(m, expected_labelme())
    np.testing.assert_array_equal(load_mask(LABELME, size=(40, 60)), m)
    with pytest.raises(DataError, match='labelme_artifact.json.*40x60 does not match.*41x60'):
        load_mask(LABELME, size=(41, 60))
    assert not load_mask(LABELME, labels=['other']).any()


def write_json(path, obj):
    with open(path, 'w', encoding='utf-8') as f:
        json.dump(obj, f) if not isinstance(obj, str) else f.write(obj)
    return str(path)


def test_labelme_shapes_and_errors(tmp_path):
    with open(LABELME, encoding='utf-8') as f:
        base = json.load(f)
    circle = {**base, 'shapes': [{'label': 'a', 'points': [[20, 15], [20, 22.2]], 'shape_type': 'circle'},
                                 {'label': 'a', 'points': [[1, 1], [9, 9]], 'shape_type': 'line'},
                                 {'label': 'a', 'points': [[5, 30], [12, 30], [8, 37]]}]}  # no shape_type
    want = np.zeros((40, 60), np.uint8)
    cv2.circle(want, (20, 15), 7, 1, thickness=-1)
    cv2.fillPoly(want, [np.array([[5, 30], [12, 30], [8, 37]], np.int32)], 1)
    with pytest.warns(UserWarning, match='1 line'):
        got = load_mask(write_json(tmp_path / 'c.json', circle))
    np.testing.assert_array_equal(got, want.astype(bool))

    no_size = {k: v for k, v in base.items() if k not in ('imageHeight', 'imageWidth')}
    p = write_json(tmp_path / 'nosize.json', no_size)
    with pytest.raises(DataError, match='nosize.json.*imageHeight'):
        load_mask(p)
    np.testing.assert_array_equal(load_mask(p, size=(40, 60)), expected_labelme())

    bad = {
        'broken.json': '{"shapes": [',
        'few.json': {**base, 'shapes': [{'label': 'a', 'points': [[1, 1], [5, 5]], 'shape_type': 'polygon'}]},
        'unknown.json': {**base, 'shapes': [{'label': 'a', 'points': [[1, 1], [5, 5]], 'shape_type': 'blob'}]},
        'nonnum.json': {**base, 'shapes': [{'label': 'a', 'points': [['x', 1], [5, 5], [3, 3]]}]},
    }
    for name, obj in bad.items():
        with pytest.raises(DataError, match=name.replace('.', r'\.')):
            load_mask(write_json(tmp_path / name, obj))
    with pytest.raises(DataError, match='at least 3'):
        load_mask(str(tmp_path / 'few.json'))
    with pytest.raises(DataError, match="unknown shape_type 'blob'"):
        load_mask(str(tmp_path / 'unknown.json'))


def test_load_png_variants(tmp_path):
    m = expected_labelme()
    cv2.imwrite(str(tmp_path / 'g.png'), m.astype(np.uint8) * 255)
    cv2.imwrite(str(tmp_path / 'c.png'), np.dstack([np.zeros_like(m), m, np.zeros_like(m)]).astype(np.uint8) * 200)
    cv2.imwrite(str(tmp_path / 'w.png'), m.astype(np.uint16) * 65535)
    for name in ('g.png', 'c.png', 'w.png'):
        np.testing.assert_array_equal(load_mask(tmp_path / name), m)
    with pytest.raises(DataError, match='g.png is 40x60, expected 30x60'):
        load_mask(tmp_path / 'g.png', size=(30, 60))
    with pytest.raises(DataError, match='missing.png'):
        load_mask(tmp_path / 'missing.png')
    # file paths work as dict values
    r = artifact_metrics({'g': str(tmp_path / 'g.png')}, {'g': LABELME})
    assert r['iou'] == 1.0 and r['precision'] == 1.0 and r['recall'] == 1.0


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------

def write_mask(path, mask):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cv2.imwrite(str(path), mask.astype(np.uint8) * 255)


@pytest.fixture()
def eval_dirs(tmp_path):
    """pred in the two-level layout root/<sub>/<img>, GT flat with one LabelMe JSON and one PNG."""
    pred_b, gt_b = scene()
    lab = expected_labelme()
    write_mask(tmp_path / 'pred' / 'sub1' / 'img_a.png', lab)
    write_mask(tmp_path / 'pred' / 'sub2' / 'img_b.png', pred_b)
    os.makedirs(tmp_path / 'gt')
    with open(LABELME, encoding='utf-8') as f:
        (tmp_path / 'gt' / 'img_a.json').write_text(f.read(), encoding='utf-8')
    write_mask(tmp_path / 'gt' / 'img_b.png', gt_b)
    after_b = np.zeros_like(gt_b)
    box(after_b, 3, 4, 3, 4)  # remnant in G1
    box(after_b, 20, 21, 30, 31)  # new blob
    write_mask(tmp_path / 'after' / 'img_a.png', np.zeros_like(lab))
    write_mask(tmp_path / 'after' / 'img_b.png', after_b)
    return tmp_path


def test_eval_script_end_to_end(eval_dirs):
    t = eval_dirs
    res = run_script('scripts/eval_artifacts.py',
                     ['--pred', str(t / 'pred'), '--gt', str(t / 'gt'), '--after', str(t / 'after'),
                      '--crop', '0', '--name', 'Net', '--json', str(t / 'out' / 'r.json')], cwd=str(t))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    # IoU: (1 + 45/104) / 2; precision (2 + 2) / (2 + 3); recall (2 + 1) / (2 + 2)
    i = lines.index('| Method | IoU (x100) | Precision | Recall |')
    assert lines[i + 1:i + 3] == ['|---|---|---|---|', '| Net | 71.6 | 0.8000 | 0.7500 |']
    # after: IoU (0 + 4/79) / 2; removed 3 of 4 GT regions; 1 of 2 images has a new region
    j = lines.index('| Method | IoU (x100) | Removal rate | Addition rate |')
    assert lines[j + 2:j + 4] == ['| Net | 71.6 | - | - |', '| Net-DeSRA | 2.5 | 75.00% | 50.00% |']
    with open(t / 'out' / 'r.json', encoding='utf-8') as f:
        out = json.load(f)
    assert out['detection']['iou'] == pytest.approx((1 + 45 / 104) / 2)
    assert out['removal_addition']['num_removed_regions'] == 3
    assert [d['name'] for d in out['detection']['per_image']] == ['img_a', 'img_b']


def test_eval_script_missing_twins(eval_dirs):
    t = eval_dirs
    os.remove(t / 'gt' / 'img_b.png')
    write_mask(t / 'gt' / 'img_c.png', np.zeros((30, 40), bool))
    args = ['--pred', str(t / 'pred'), '--gt', str(t / 'gt'), '--crop', '0']
    res = run_script('scripts/eval_artifacts.py', args, cwd=str(t))
    assert res.returncode == 2
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and 'have no GT' in err[0] and 'img_b' in err[0] and 'img_c' in err[0]
    assert '--allow-missing' in err[0] and 'Traceback' not in res.stderr
    res = run_script('scripts/eval_artifacts.py', args + ['--allow-missing', '--name', 'X'], cwd=str(t))
    assert res.returncode == 0, res.stderr
    assert 'warning: skipping' in res.stderr
    assert '| X | 100.0 | 1.0000 | 1.0000 |' in res.stdout
