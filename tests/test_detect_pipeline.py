"""detect.py end to end: mode (a) with tiny generators + tiny SegFormer, mode (b) on real photos, resume,
sharding, the gallery, and bad input."""
import json
import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from conftest import REPO, SHARED, cli_env, run_script, write_opt
from desra.detection.pipeline import read_sr_image

PHOTOS = os.path.join(SHARED, 'data', 'photos')


def mode_b_opt(mse, gan, root, **detector):
    return {'name': 'det', 'input': {'mse_sr': str(mse), 'gan_sr': str(gan)}, 'segmenter': {'type': 'none'},
            'detector': {'type': 'desra', 'min_area': 500, **detector}, 'output': {'root': str(root)}}


def html_images(index_path):
    text = open(index_path, encoding='utf-8').read()
    return re.findall(r'<img [^>]*src="([^"]+)"', text)


def make_sr_pair_folder(root, n=3, size=(48, 64), seed=0):
    rng = np.random.default_rng(seed)
    for sub in ('MSE', 'GAN'):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for i in range(n):
        base = cv2.GaussianBlur(rng.integers(0, 256, (*size, 3)).astype(np.uint8), (7, 7), 2)
        gan = base.copy()
        gan[10:40, 10:40] = rng.integers(0, 256, (30, 30, 3))  # a noisy, texture-inconsistent patch
        cv2.imwrite(os.path.join(root, 'MSE', f'img{i}.png'), base)
        cv2.imwrite(os.path.join(root, 'GAN', f'img{i}.png'), gan)
    return os.path.join(root, 'MSE'), os.path.join(root, 'GAN')


@pytest.mark.skipif(not os.path.isdir(os.path.join(PHOTOS, 'GAN-SR')), reason='shared photos absent')
def test_mode_b_on_real_photos_then_resume_skips_everything(tmp_path):
    out_root = tmp_path / 'out'
    opt = write_opt(tmp_path / 'det.yml', mode_b_opt(os.path.join(PHOTOS, 'MSE-SR'), os.path.join(PHOTOS, 'GAN-SR'),
                                                     out_root))
    first = run_script('detect.py', ['-opt', opt], tmp_path)
    assert first.returncode == 0, first.stderr
    names = sorted(os.path.splitext(f)[0] for f in os.listdir(os.path.join(PHOTOS, 'GAN-SR')))
    assert sorted(os.path.splitext(f)[0] for f in os.listdir(out_root / 'masks')) == names
    for name in names:
        mask = cv2.imread(str(out_root / 'masks' / f'{name}.png'), cv2.IMREAD_UNCHANGED)
        gan = cv2.imread(os.path.join(PHOTOS, 'GAN-SR', f'{name}.png'))
        assert mask.shape == gan.shape[:2] and set(np.unique(mask)) <= {0, 255}
        rec = json.load(open(out_root / 'records' / f'{name}.json'))
        assert rec['artifact_pixels'] == int((mask > 0).sum())
    assert f'{len(names)} image(s) processed, 0 skipped' in first.stdout
    # every picture the gallery shows exists
    imgs = html_images(out_root / 'index.html')
    assert len(imgs) == 4 * len(names)  # MSE-SR, GAN-SR, D, overlay (no LR column in mode b)
    for rel in imgs:
        assert os.path.isfile(os.path.join(out_root, rel)), rel
    mtimes = {p: os.path.getmtime(out_root / 'masks' / p) for p in os.listdir(out_root / 'masks')}

    second = run_script('detect.py', ['-opt', opt], tmp_path)
    assert second.returncode == 0, second.stderr
    assert f'0 image(s) processed, {len(names)} skipped' in second.stdout
    assert mtimes == {p: os.path.getmtime(out_root / 'masks' / p) for p in os.listdir(out_root / 'masks')}


def _tiny_generator_ckpt(path, scale, seed):
    from desra.archs.rrdbnet_arch import RRDBNet

    torch.manual_seed(seed)
    net = RRDBNet(3, 3, scale, num_feat=8, num_block=1, num_grow_ch=4)
    torch.save({'params_ema': net.state_dict()}, path)


def _tiny_segformer(folder):
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    from desra.detection.ade20k import ADE20K_CLASSES

    torch.manual_seed(0)
    cfg = SegformerConfig(num_encoder_blocks=4, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                          num_attention_heads=[1, 1, 1, 1], sr_ratios=[8, 4, 2, 1], decoder_hidden_size=16,
                          num_labels=150, id2label=dict(enumerate(ADE20K_CLASSES)),
                          label2id={n: i for i, n in enumerate(ADE20K_CLASSES)})
    SegformerForSemanticSegmentation(cfg).save_pretrained(folder)


def test_mode_a_tiny_generators_and_segformer(tmp_path):
    lr_dir = tmp_path / 'LR' / 'sub'
    lr_dir.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i, size in enumerate([(16, 20), (16, 20), (18, 14)]):  # two same-size images batch together
        cv2.imwrite(str(lr_dir / f'{i}.png'), rng.integers(0, 256, (*size, 3)).astype(np.uint8))
    (lr_dir / 'notes.txt').write_text('not an image')
    _tiny_generator_ckpt(tmp_path / 'mse.pth', 4, 0)
    _tiny_generator_ckpt(tmp_path / 'gan.pth', 4, 1)
    _tiny_segformer(tmp_path / 'segformer')
    net = {'type': 'RRDBNet', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_block': 1, 'num_grow_ch': 4}
    weights = [1.0] * 150
    opt = {'name': 'det_a', 'scale': 4, 'input': {'lr': str(tmp_path / 'LR')},
           'mse_model': {'network': net, 'path': str(tmp_path / 'mse.pth')},
           'gan_model': {'network': net, 'path': str(tmp_path / 'gan.pth')},
           'tile_size': 8, 'tile_pad': 4, 'batch_size': 2,
           'segmenter': {'type': 'segformer', 'model': str(tmp_path / 'segformer')},
           'class_weights': weights,
           'detector': {'type': 'desra', 'min_area': 0.01},
           'output': {'root': str(tmp_path / 'out'), 'save_maps': True}}
    path = write_opt(tmp_path / 'det.yml', opt)
    out = run_script('detect.py', ['-opt', path], tmp_path)
    assert out.returncode == 0, out.stderr
    assert 'Ignoring 1 non-image file(s)' in out.stdout and 'notes.txt' in out.stdout
    root = tmp_path / 'out'
    for i, (h, w) in enumerate([(16, 20), (16, 20), (18, 14)]):
        name = os.path.join('sub', str(i))
        mask = cv2.imread(str(root / 'masks' / f'{name}.png'), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (4 * h, 4 * w)
        for kind, ext in (('MSE-SR', '.png'), ('GAN-SR', '.png'), ('overlays', '.jpg'), ('labels', '.png'),
                          ('vis/D', '.jpg')):
            assert os.path.isfile(root / kind / f'{name}{ext}'), kind
        d = np.load(root / 'maps' / 'D' / f'{name}.npy')
        assert d.shape == (4 * h - 10, 4 * w - 10) and np.all(d <= 1 + 1e-6)
        labels = cv2.imread(str(root / 'labels' / f'{name}.png'), cv2.IMREAD_UNCHANGED)
        assert labels.shape == (4 * h, 4 * w) and labels.max() < 150
    # the saved SR images are what the generators produce (rounded to uint8)
    from desra.archs.rrdbnet_arch import RRDBNet

    g = RRDBNet(3, 3, 4, num_feat=8, num_block=1, num_grow_ch=4)
    g.load_state_dict(torch.load(tmp_path / 'gan.pth', weights_only=True)['params_ema'])
    lr = cv2.imread(str(lr_dir / '2.png'))[..., ::-1].copy()
    with torch.no_grad():
        sr = g(torch.from_numpy(lr).permute(2, 0, 1)[None].float() / 255).clamp(0, 1)
    expected = (sr[0].permute(1, 2, 0).numpy()[..., ::-1] * 255).round()
    saved = cv2.imread(str(root / 'GAN-SR' / 'sub' / '2.png')).astype(np.float64)
    assert np.abs(saved - expected).max() <= 1  # tiling with pad 4 over a 1-block RRDB: at most rounding
    for rel in html_images(root / 'index.html'):
        assert os.path.isfile(os.path.join(root, rel)), rel
    again = run_script('detect.py', ['-opt', path], tmp_path)
    assert again.returncode == 0 and '0 image(s) processed, 3 skipped' in again.stdout


def test_torchrun_shards_images(tmp_path):
    mse, gan = make_sr_pair_folder(str(tmp_path / 'data'), n=5)
    path = write_opt(tmp_path / 'det.yml', mode_b_opt(mse, gan, tmp_path / 'out', min_area=10))
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', '--master_port=29531',
           os.path.join(REPO, 'detect.py'), '-opt', path, '--launcher', 'pytorch']
    out = subprocess.run(cmd, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert sorted(os.listdir(tmp_path / 'out' / 'masks')) == [f'img{i}.png' for i in range(5)]
    assert len(html_images(tmp_path / 'out' / 'index.html')) == 5 * 4
    # the noisy patch pasted into every GAN-SR image is found
    for i in range(5):
        mask = cv2.imread(str(tmp_path / 'out' / 'masks' / f'img{i}.png'), cv2.IMREAD_UNCHANGED)
        assert mask[15:35, 15:35].mean() > 200


def test_gan_without_mse_twin_is_reported(tmp_path):
    mse, gan = make_sr_pair_folder(str(tmp_path / 'data'), n=3)
    os.remove(os.path.join(mse, 'img1.png'))
    path = write_opt(tmp_path / 'det.yml', mode_b_opt(mse, gan, tmp_path / 'out'))
    out = run_script('detect.py', ['-opt', path], tmp_path)
    assert out.returncode == 2 and 'Traceback' not in out.stderr
    assert out.stderr.strip() == (f'error: input.gan_sr: 1 GAN-SR image(s) have no MSE-SR twin in {mse}: '
                                  f'{os.path.join(gan, "img1.png")}')
    assert not os.path.exists(tmp_path / 'out' / 'masks')


def test_mismatched_sizes_named_and_nothing_half_written(tmp_path):
    mse, gan = make_sr_pair_folder(str(tmp_path / 'data'), n=3)
    cv2.imwrite(os.path.join(gan, 'img2.png'), np.zeros((40, 64, 3), np.uint8))
    path = write_opt(tmp_path / 'det.yml', mode_b_opt(mse, gan, tmp_path / 'out', min_area=10))
    out = run_script('detect.py', ['-opt', path], tmp_path)
    assert out.returncode == 2 and 'Traceback' not in out.stderr
    assert out.stderr.strip() == (f'error: MSE-SR {os.path.join(mse, "img2.png")} is 64x48 but GAN-SR '
                                  f'{os.path.join(gan, "img2.png")} is 64x40 (WxH); the pair must match')
    # found from the image headers before anything was computed: the output root was never created
    assert not (tmp_path / 'out').exists()


def test_corrupt_png_is_named(tmp_path):
    mse, gan = make_sr_pair_folder(str(tmp_path / 'data'), n=2)
    with open(os.path.join(gan, 'img0.png'), 'wb') as f:
        f.write(b'this is not a png')
    path = write_opt(tmp_path / 'det.yml', mode_b_opt(mse, gan, tmp_path / 'out'))
    out = run_script('detect.py', ['-opt', path], tmp_path)
    assert out.returncode == 2 and 'Traceback' not in out.stderr
    assert os.path.join(gan, 'img0.png') in out.stderr


def test_read_sr_image_gray_rgba_16bit(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 6, 3)).astype(np.uint8)
    cv2.imwrite(str(tmp_path / 'rgb.png'), rgb)
    cv2.imwrite(str(tmp_path / 'gray.png'), rgb[..., 0])
    cv2.imwrite(str(tmp_path / 'rgba.png'), np.dstack([rgb, np.full((5, 6), 7, np.uint8)]))
    cv2.imwrite(str(tmp_path / 'deep.png'), rgb.astype(np.uint16) * 257)
    assert np.array_equal(read_sr_image(str(tmp_path / 'rgb.png')), rgb.astype(np.float32))
    assert np.array_equal(read_sr_image(str(tmp_path / 'gray.png')), np.repeat(rgb[..., :1], 3, 2).astype(np.float32))
    assert np.array_equal(read_sr_image(str(tmp_path / 'rgba.png')), rgb.astype(np.float32))
    assert np.allclose(read_sr_image(str(tmp_path / 'deep.png')), rgb.astype(np.float32), atol=1e-4)


@pytest.mark.parametrize('change, message', [
    (lambda o: o['input'].update(lr='x'), 'input: set one of input.lr (run the generators), input.mse_sr'),
    (lambda o: o['input'].pop('mse_sr'), 'input.mse_sr: missing; mode (b) needs both'),
    (lambda o: o['detector'].update(type='desr'), "detector.type: unknown detector type 'desr'. Did you mean 'desra'?"),
    (lambda o: o['detector'].update(threshold='high'), "detector.threshold: expected a number, got 'high'"),
])
def test_option_errors(tmp_path, change, message):
    opt = mode_b_opt(tmp_path, tmp_path, tmp_path / 'out')
    change(opt)
    out = run_script('detect.py', ['-opt', write_opt(tmp_path / 'det.yml', opt)], tmp_path)
    assert out.returncode == 2 and 'Traceback' not in out.stderr
    assert out.stderr.startswith(f'error: {message}'), out.stderr
