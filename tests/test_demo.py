"""The demo script on a small crop with the shared real weights: gallery pictures exist, records are right."""
import json
import os
import re

import cv2
import pytest

from conftest import SHARED, run_script

WEIGHTS = os.path.join(SHARED, 'weights')


@pytest.mark.skipif(not os.path.isfile(os.path.join(WEIGHTS, 'RealESRGAN_x4plus.safetensors')),
                    reason='shared weights absent')
def test_demo_gallery_references_existing_images(tmp_path):
    out = tmp_path / 'demo'
    res = run_script('scripts/demo.py', ['--photos', 'gravel', 'rocket', '--max-side', '192', '--out', str(out),
                                         '--weights-dir', WEIGHTS], tmp_path)
    assert res.returncode == 0, res.stderr
    assert 'GAN-SR: Real-ESRGAN x4plus' in res.stdout and 'MSE-SR: SPAN x4' in res.stdout
    assert '| image | SR size | artifact area | regions |' in res.stdout
    html = open(out / 'index.html', encoding='utf-8').read()
    srcs = re.findall(r'<img [^>]*src="([^"]+)"', html)
    assert len(srcs) == 2 * 5  # LR, MSE-SR, GAN-SR, D, overlay for each photo
    for rel in srcs:
        assert os.path.isfile(os.path.join(out, rel)), rel
    for name in ('gravel', 'rocket'):
        rec = json.load(open(out / 'records' / f'{name}.json'))
        lr = cv2.imread(str(out / 'data' / 'LR' / f'{name}.png'))
        gan = cv2.imread(str(out / 'GAN-SR' / f'{name}.png'))
        assert gan.shape[:2] == (4 * lr.shape[0], 4 * lr.shape[1]) == (rec['height'], rec['width'])
        mask = cv2.imread(str(out / 'masks' / f'{name}.png'), cv2.IMREAD_UNCHANGED)
        assert rec['artifact_pixels'] == int((mask > 0).sum())
    # Real-ESRGAN x4plus hallucinates texture on gravel: the detector flags some of it
    assert json.load(open(out / 'records' / 'gravel.json'))['artifact_pixels'] > 0
