"""The artifact localiser: losses on hand-built inputs, ArtifactMaskDataset (layouts, bad masks), sliding-window
inference, LocalizerModel training / validation / resume, and detect.py's image-only localiser mode."""
import json
import os

import cv2
import numpy as np
import pytest
import torch

from conftest import cli_main, make_artifact_photos, user_error_in_process, write_opt
from desra.data.build import build_dataset
from desra.detection.localizer import predict_probability, predict_probability_tensor
from desra.errors import ConfigError, DataError
from desra.losses.seg_loss import BCEDiceLoss, BCEWithLogitsLoss, SoftDiceLoss, soft_dice_loss

# A stand-in localiser (any registered arch mapping 3 channels to 1 at scale 1 works with the engine).
STAND_IN = {'type': 'RRDBNet', 'num_in_ch': 3, 'num_out_ch': 1, 'scale': 1, 'num_feat': 8, 'num_block': 1,
            'num_grow_ch': 4}


# ------------------------------------------------------------------------------------------------ losses

def test_bce_dice_formulas_on_hand_built_inputs():
    logits = torch.tensor([[[[0.0, 2.0], [-1.0, 3.0]]]])
    target = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    p = 1 / (1 + np.exp(-np.array([0.0, 2.0, -1.0, 3.0])))
    t = np.array([1.0, 0.0, 0.0, 1.0])
    bce = -np.mean(t * np.log(p) + (1 - t) * np.log(1 - p))
    dice = 1 - (2 * np.sum(p * t) + 1) / (p.sum() + t.sum() + 1)
    assert float(BCEWithLogitsLoss()(logits, target)) == pytest.approx(bce, rel=1e-6)
    assert float(SoftDiceLoss()(logits, target)) == pytest.approx(dice, rel=1e-6)
    assert float(soft_dice_loss(logits, target, smooth=0.0)) == pytest.approx(
        1 - 2 * np.sum(p * t) / (p.sum() + t.sum()), rel=1e-6)
    both = BCEDiceLoss(bce_weight=0.3, dice_weight=2.0)
    assert float(both(logits, target)) == pytest.approx(0.3 * bce + 2.0 * dice, rel=1e-6)
    terms = both.terms(logits, target)
    assert list(terms) == ['l_bce', 'l_dice'] and float(terms['l_bce']) == pytest.approx(0.3 * bce, rel=1e-6)
    # pos_weight multiplies the positive term
    pw = -np.mean(3 * t * np.log(p) + (1 - t) * np.log(1 - p))
    assert float(BCEWithLogitsLoss(pos_weight=3)(logits, target)) == pytest.approx(pw, rel=1e-6)
    # Dice per image, then the batch mean; an empty target with an empty prediction costs ~0
    empty = soft_dice_loss(torch.full((1, 1, 4, 4), -30.0), torch.zeros(1, 1, 4, 4))
    assert float(empty) < 1e-6
    two = soft_dice_loss(torch.cat([logits, -logits]), torch.cat([target, target]))
    assert float(two) == pytest.approx((float(soft_dice_loss(logits, target))
                                        + float(soft_dice_loss(-logits, target))) / 2, rel=1e-6)
    with pytest.raises(ValueError, match=r'logits \(1, 1, 2, 2\) and target \(1, 1, 2, 1\) differ in shape'):
        BCEWithLogitsLoss()(logits, target[..., :1])


# ----------------------------------------------------------------------------------------------- dataset

def _ds(opt, phase='val'):
    return build_dataset({'type': 'ArtifactMaskDataset', 'phase': phase, **opt}, f'datasets.{phase}')


def test_dataset_layouts_and_items(tmp_path):
    imgs, masks = make_artifact_photos(str(tmp_path / 'a'), n=3, size=64)
    ds = _ds({'dataroot_img': str(tmp_path / 'a' / 'images'), 'dataroot_mask': str(tmp_path / 'a' / 'masks')})
    assert len(ds) == 3
    item = ds[0]
    assert item['lq'].shape == (3, 64, 64) and item['gt'].shape == (1, 64, 64) and item['name'] == 'img000'
    np.testing.assert_allclose(item['lq'].numpy(), imgs['img000'][..., ::-1].transpose(2, 0, 1) / 255.0, atol=1e-7)
    assert torch.equal(item['gt'][0], torch.from_numpy(masks['img000'] > 0).float())
    # DeSRA release layout, with MSE-SR channels; a LabelMe mask
    root = tmp_path / 'desra' / 'RealESRGAN'
    for sub in ('GAN-SR', 'MSE-SR', 'GT-Mask'):
        os.makedirs(root / sub)
    for name, img in imgs.items():
        cv2.imwrite(str(root / 'GAN-SR' / f'{name}.png'), img)
        cv2.imwrite(str(root / 'MSE-SR' / f'{name}.png'), cv2.GaussianBlur(img, (5, 5), 1))
    for name in list(imgs)[:2]:
        cv2.imwrite(str(root / 'GT-Mask' / f'{name}.png'), masks[name])
    poly = {'shapes': [{'label': 'artifact', 'shape_type': 'polygon', 'points': [[10, 10], [30, 10], [30, 30],
                                                                                [10, 30]]}],
            'imageHeight': 64, 'imageWidth': 64}
    (root / 'GT-Mask' / 'img002.json').write_text(json.dumps(poly))
    ds = _ds({'desra_root': str(tmp_path / 'desra'), 'methods': ['RealESRGAN'], 'use_mse': True})
    assert [it['name'] for it in ds.items] == ['RealESRGAN/img000', 'RealESRGAN/img001', 'RealESRGAN/img002']
    item = ds[2]
    assert item['lq'].shape == (6, 64, 64) and 300 < item['gt'].sum() < 500
    # a split by meta_info_file
    meta = tmp_path / 'val.txt'
    meta.write_text('img002\nimg000.png\n')
    ds = _ds({'dataroot_img': str(tmp_path / 'a' / 'images'), 'dataroot_mask': str(tmp_path / 'a' / 'masks'),
              'meta_info_file': str(meta)})
    assert [it['name'] for it in ds.items] == ['img002', 'img000']


def test_dataset_training_crops_and_artifact_centred_crops(tmp_path):
    make_artifact_photos(str(tmp_path), n=4, size=96)
    opt = {'dataroot_img': str(tmp_path / 'images'), 'dataroot_mask': str(tmp_path / 'masks'), 'gt_size': 24,
           'artifact_crop_prob': 1.0}
    ds = _ds(opt, 'train')
    for i in range(4):
        a, b = ds[(i, 7)], ds[(i, 7)]
        assert a['lq'].shape == (3, 24, 24) and torch.equal(a['lq'], b['lq']) and torch.equal(a['gt'], b['gt'])
        assert a['gt'].sum() > 0  # centred on an artifact pixel
    # the crop is aligned: the mask's pixels are where the image has the pasted pattern
    full_img, full_mask = ds.load(0)
    ds2 = _ds({**opt, 'use_hflip': False, 'use_rot': False}, 'train')
    crop = ds2[(0, 3)]
    found = cv2.matchTemplate(full_img[..., :3].astype(np.float32),
                              crop['lq'].numpy().transpose(1, 2, 0).astype(np.float32), cv2.TM_SQDIFF)
    y, x = np.unravel_index(np.argmin(found), found.shape)
    np.testing.assert_array_equal(crop['gt'][0].numpy(), full_mask[y:y + 24, x:x + 24])


def test_dataset_bad_masks(tmp_path):
    make_artifact_photos(str(tmp_path), n=2, size=48)
    opt = {'dataroot_img': str(tmp_path / 'images'), 'dataroot_mask': str(tmp_path / 'masks')}
    cv2.imwrite(str(tmp_path / 'masks' / 'img001.png'), np.zeros((40, 48), np.uint8))
    with pytest.raises(DataError) as e:
        _ds(opt)[1]
    assert str(e.value) == (f"mask {tmp_path / 'masks' / 'img001.png'} is 48x40 but its image "
                            f"{tmp_path / 'images' / 'img001.png'} is 48x48")
    gray = np.zeros((48, 48), np.uint8)
    gray[:10, :10], gray[20:, 20:] = 128, 255
    cv2.imwrite(str(tmp_path / 'masks' / 'img001.png'), gray)
    with pytest.raises(DataError) as e:
        _ds(opt)[1]
    assert str(e.value) == (f"mask {tmp_path / 'masks' / 'img001.png'} is not binary: values 0, 128, 255 "
                            '(expected 0 and 255, or 0 and 1)')
    os.remove(tmp_path / 'masks' / 'img001.png')
    with pytest.raises(DataError, match=r"datasets\.val: 1 image\(s\) in .* have no mask in .*: img001"):
        _ds(opt)
    with pytest.raises(ConfigError, match='give exactly one of dataroot_img'):
        _ds({**opt, 'detect_root': str(tmp_path)})
    with pytest.raises(ConfigError, match=r"^datasets\.val\.dataroot_msk: unknown key; did you mean dataroot_mask\?$"):
        build_dataset({'type': 'ArtifactMaskDataset', 'phase': 'val', 'dataroot_img': 'x', 'dataroot_msk': 'y'},
                      'datasets.val')


# --------------------------------------------------------------------------------------------- inference

class _Local(torch.nn.Module):
    """A 3x3 conv net (receptive field 5 px): windows with enough overlap give the whole-image result."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1 = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = torch.nn.Conv2d(4, 1, 3, padding=1)

    def forward(self, x):
        return self.c2(torch.relu(self.c1(x)))


def test_sliding_windows_equal_the_whole_image_inside():
    img = np.random.default_rng(0).integers(0, 256, (150, 203, 3)).astype(np.uint8)
    net = _Local().eval()
    whole = predict_probability(net, img, tile=512, overlap=0, divisor=1)
    tiled = predict_probability(net, img, tile=64, overlap=16, divisor=1)
    assert tiled.shape == (150, 203) and tiled.dtype == np.float32 and 0 <= tiled.min() and tiled.max() <= 1
    # the net sees 2 px around a pixel and the windows drop their outer overlap // 4 = 4 px at inner edges: every
    # blended value is a blend of equal values
    np.testing.assert_allclose(tiled, whole, atol=1e-6)
    blurry = predict_probability(net, img, tile=64, overlap=4, divisor=1)  # margin 1 < 2: seams appear
    assert np.abs(blurry - whole).max() > 1e-3
    x = torch.from_numpy(img[..., ::-1].copy()).permute(2, 0, 1)[None].float() / 255
    np.testing.assert_allclose(predict_probability_tensor(net, x, tile=512, overlap=0, divisor=1).numpy(), whole)
    with pytest.raises(ValueError, match=r'overlap must be in \[0, tile\)'):
        predict_probability(net, img, tile=32, overlap=32)


# ------------------------------------------------------------------------------------------ training

TINY_LOCALIZER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'options', 'tiny',
                              'localizer.yml')


@pytest.fixture(scope='module')
def artifact_data(tmp_path_factory):
    root = tmp_path_factory.mktemp('artifacts')
    make_artifact_photos(str(root), n=8, size=96)
    return root


def _data_overrides(root):
    return [f'datasets:{p}:{k}={root / d}' for p in ('train', 'val')
            for k, d in (('dataroot_img', 'images'), ('dataroot_mask', 'masks'))]


def _train(cwd, data, *extra, name='tiny_loc', network=STAND_IN):
    """train.py on the tiny localiser options; flags (``--auto_resume``) first, then ``--force_yml`` overrides."""
    from conftest import run_script
    os.makedirs(cwd, exist_ok=True)
    flags = [e for e in extra if e.startswith('--')]
    net = '{' + ', '.join(f'{k}: {v}' for k, v in network.items()) + '}'
    return run_script('train.py', ['-opt', TINY_LOCALIZER, *flags, '--force_yml', f'name={name}', f'network_g={net}',
                                   *_data_overrides(data), *[e for e in extra if not e.startswith('--')]], cwd)


def test_localizer_trains_validates_and_resumes_exactly(tmp_path, artifact_data):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from conftest import read_losses

    full = _train(tmp_path / 'full', artifact_data, 'train:total_iter=6', 'val:val_freq=3',
                  'logger:save_checkpoint_freq=3', 'logger:use_tb_logger=true', 'train:ema_decay=0.9')
    assert full.returncode == 0, full.stderr[-3000:]
    exp = tmp_path / 'full' / 'experiments' / 'tiny_loc'
    g = torch.load(exp / 'models' / 'net_g_6.pth', weights_only=True)
    assert set(g) == {'params', 'params_ema'} and 'conv_first.weight' in g['params']
    losses = read_losses(exp)
    assert sorted(losses) == list(range(1, 7)) and set(losses[1]) == {'l_bce', 'l_dice'}
    log = open(next(exp.glob('train_tiny_loc_*.log'))).read()
    assert 'Validation tiny_val @ iter 6 (threshold 0.5, 8 images): iou: ' in log
    assert 'precision: ' in log and 'recall: ' in log
    acc = EventAccumulator(str(tmp_path / 'full' / 'tb_logger' / 'tiny_loc'))
    acc.Reload()
    for k in ('iou', 'precision', 'recall'):
        assert [e.step for e in acc.Scalars(f'metrics/tiny_val/{k}')] == [3, 6]
    # stop at 3, then resume to 6: the same losses, bit for bit
    part = tmp_path / 'part'
    first = _train(part, artifact_data, 'train:total_iter=3', 'val:val_freq=3', 'logger:save_checkpoint_freq=3',
                   'train:ema_decay=0.9')
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = _train(part, artifact_data, '--auto_resume', 'train:total_iter=6', 'val:val_freq=3',
                     'logger:save_checkpoint_freq=3', 'train:ema_decay=0.9')
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    l2 = read_losses(part / 'experiments' / 'tiny_loc')
    assert {i: l2[i] for i in range(1, 7)} == {i: losses[i] for i in range(1, 7)}
    g2 = torch.load(part / 'experiments' / 'tiny_loc' / 'models' / 'net_g_6.pth', weights_only=True)
    assert all(torch.equal(g['params_ema'][k], g2['params_ema'][k]) for k in g['params_ema'])


def test_localizer_needs_mask_data(tmp_path, tiny_data, monkeypatch):
    from conftest import TINY_GAN_LDL, data_overrides
    msg = user_error_in_process(cli_main('train.py'), ['-opt', TINY_GAN_LDL, '--force_yml', 'name=x',
                                                       'model_type=LocalizerModel', *data_overrides(tiny_data)],
                                tmp_path, monkeypatch)
    assert msg == ('model_type LocalizerModel learns artifact masks: datasets.train.type must be '
                   'ArtifactMaskDataset, got PairedImageDataset')


# --------------------------------------------------------------------------------------- detect.py (c)

@pytest.fixture(scope='module')
def stand_in_ckpt(tmp_path_factory):
    from desra.models.base_model import build_network
    torch.manual_seed(0)
    net = build_network(dict(STAND_IN), 'network')
    path = tmp_path_factory.mktemp('loc') / 'net_g_5.pth'
    torch.save({'params': net.state_dict()}, path)
    return path, net.eval()


def _detect_opt(root, images, ckpt, **detector):
    return {'name': 'loc', 'input': {'images': str(images)},
            'detector': {'type': 'localizer', 'network': dict(STAND_IN), 'checkpoint': str(ckpt), 'threshold': 0.5,
                         'min_area': 0, 'tile': 64, 'overlap': 16, **detector},
            'output': {'root': str(root), 'save_maps': True}}


def _files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_detect_localizer_mode_end_to_end(tmp_path, artifact_data, stand_in_ckpt, monkeypatch):
    import html
    import re
    from urllib.parse import unquote

    ckpt, net = stand_in_ckpt
    root = tmp_path / 'out'
    opt_path = write_opt(tmp_path / 'detect.yml', _detect_opt(root, artifact_data / 'images', ckpt))
    monkeypatch.chdir(tmp_path)
    result = cli_main('detect.py')(['-opt', opt_path])
    names = [f'img{i:03d}' for i in range(8)]
    assert result['processed'] == 8
    files = [f for f in _files(root) if not f.startswith('detect_loc_')]
    expected = sorted([f'{k}/{n}{e}' for n in names for k, e in (('masks', '.png'), ('vis/P', '.jpg'),
                                                                 ('maps/P', '.npy'), ('overlays', '.jpg'),
                                                                 ('records', '.json'))]
                      + ['index.html', 'summary.csv'])
    assert files == expected
    assert len([f for f in _files(root) if f.startswith('detect_loc_')]) == 1  # the log
    # the saved probability is the network's, the mask its thresholded version through DeSRA's morphology
    img = cv2.imread(str(artifact_data / 'images' / 'img003.png'))
    prob = predict_probability(net, img, tile=64, overlap=16)
    np.testing.assert_allclose(np.load(root / 'maps' / 'P' / 'img003.npy'), prob, atol=1e-6)
    mask = cv2.imread(str(root / 'masks' / 'img003.png'), cv2.IMREAD_UNCHANGED)
    from desra.detection.morphology import clean_mask
    np.testing.assert_array_equal(mask, clean_mask(prob > 0.5, min_area=0))
    rec = json.load(open(root / 'records' / 'img003.json'))
    assert rec['map'] == 'P' and rec['mse_sr'] is None and rec['gan_sr'] == str(artifact_data / 'images' / 'img003.png')
    # every image the gallery shows exists; the probability column is there
    page = (root / 'index.html').read_text()
    assert 'P: artifact probability (red = 1)' in page and "the localiser's artifact probability" in page
    srcs = [unquote(html.unescape(s)) for s in re.findall(r'src="([^"]+)"', page)]
    assert len(srcs) == 8 * 3 and all((root / s).is_file() for s in srcs)
    # a rerun skips everything
    again = cli_main('detect.py')(['-opt', opt_path])
    assert again['processed'] == 0 and again['skipped'] == 8


def test_detect_localizer_bad_input(tmp_path, artifact_data, stand_in_ckpt, monkeypatch):
    ckpt, _ = stand_in_ckpt
    main = cli_main('detect.py')
    # a checkpoint of another architecture: the message lists the keys
    wrong = tmp_path / 'wrong.pth'
    torch.save({'params': {'conv.weight': torch.zeros(1, 3, 3, 3)}}, wrong)
    opt = write_opt(tmp_path / 'a.yml', _detect_opt(tmp_path / 'o1', artifact_data / 'images', wrong))
    msg = user_error_in_process(main, ['-opt', opt], tmp_path, monkeypatch)
    assert msg.startswith(f"detector.checkpoint: checkpoint '{wrong}' does not match RRDBNet: 42 missing key(s) (in "
                          'the network, not in the file): conv_first.weight, conv_first.bias, ')
    assert 'conv_first.weight' in msg and 'conv.weight' in msg
    assert not (tmp_path / 'o1').exists()
    # images alone with a detector that compares MSE-SR and GAN-SR
    o = _detect_opt(tmp_path / 'o2', artifact_data / 'images', ckpt)
    o['detector'] = {'type': 'desra'}
    msg = user_error_in_process(main, ['-opt', write_opt(tmp_path / 'b.yml', o)], tmp_path, monkeypatch)
    assert msg == ('input.images: detector.type desra compares MSE-SR with GAN-SR; give input.mse_sr + '
                   'input.gan_sr, or use detector.type: localizer')
    o = _detect_opt(tmp_path / 'o3', artifact_data / 'images', tmp_path / 'missing.pth')
    msg = user_error_in_process(main, ['-opt', write_opt(tmp_path / 'c.yml', o)], tmp_path, monkeypatch)
    assert msg == f'detector.checkpoint: file does not exist: {tmp_path / "missing.pth"}'
    o = _detect_opt(tmp_path / 'o4', artifact_data / 'images', ckpt, threshhold=0.3)
    msg = user_error_in_process(main, ['-opt', write_opt(tmp_path / 'd.yml', o)], tmp_path, monkeypatch)
    assert msg.startswith('detector.threshhold: unknown key; did you mean threshold?')


# ----------------------------------------------------------------------------------------- learning

SMALL_DEEPLAB = {'type': 'DeepLabV3Plus', 'encoder_name': 'resnet18', 'encoder_depth': 3, 'decoder_channels': 32,
                 'classes': 1}


def test_small_deeplab_learns_pasted_artifacts(tmp_path):
    """train.py, CPU, well under a minute: IoU >= 0.8 on held-out photos with pasted checkerboard / noise."""
    import re
    import time

    make_artifact_photos(str(tmp_path / 'train'), n=24, size=96, seed=1)
    make_artifact_photos(str(tmp_path / 'held'), n=8, size=96, seed=2)
    overrides = [f'datasets:train:dataroot_img={tmp_path / "train" / "images"}',
                 f'datasets:train:dataroot_mask={tmp_path / "train" / "masks"}',
                 f'datasets:val:dataroot_img={tmp_path / "held" / "images"}',
                 f'datasets:val:dataroot_mask={tmp_path / "held" / "masks"}',
                 'datasets:train:batch_size_per_gpu=8', 'train:total_iter=250', 'val:val_freq=250',
                 'logger:print_freq=50', 'logger:save_checkpoint_freq=250']
    from conftest import run_script
    net = '{' + ', '.join(f'{k}: {v}' for k, v in SMALL_DEEPLAB.items()) + '}'
    t0 = time.time()
    out = run_script('train.py', ['-opt', TINY_LOCALIZER, '--force_yml', 'name=learn', f'network_g={net}',
                                  *overrides], tmp_path)
    seconds = time.time() - t0
    assert out.returncode == 0, out.stderr[-3000:]
    log = open(next((tmp_path / 'experiments' / 'learn').glob('train_learn_*.log'))).read()
    iou = float(re.search(r'Validation tiny_val @ iter 250 \(threshold 0.5, 8 images\): iou: ([\d.]+)', log)[1])
    print(f'small DeepLabV3+ (resnet18, depth 3): held-out IoU {iou:.3f} after 250 iterations in {seconds:.1f} s')
    assert iou >= 0.8


def test_ddp_two_processes_match_one_process(tmp_path, artifact_data):
    """torchrun --nproc_per_node=2 (gloo, CPU), batch 2 per process == 1 process with batch 4, BatchNorm included
    (its statistics are those of the global batch, see DistributedBatchNorm2d). The ASPP dropout is off: its masks
    are drawn per process, so no N-process run can repeat a 1-process run's draws. SGD, not Adam: Adam's first steps
    move every weight by +-lr whatever its gradient's size, so float-noise gradients (the order of the sums
    differs between the two runs) flip signs and the runs part by 2 lr; the runs' gradients are what is compared."""
    import subprocess
    import sys

    from conftest import REPO, cli_env
    n_it = 6
    common = [f'train:total_iter={n_it}', 'val:val_freq=1000', f'logger:save_checkpoint_freq={n_it}',
              'train:optim_g={type: SGD, lr: 0.01, momentum: 0.9}']
    network = {**SMALL_DEEPLAB, 'decoder_aspp_dropout': 0}
    single = _train(tmp_path / 'one', artifact_data, *common, 'datasets:train:batch_size_per_gpu=4', network=network)
    assert single.returncode == 0, single.stderr[-3000:]
    net = '{' + ', '.join(f'{k}: {v}' for k, v in network.items()) + '}'
    os.makedirs(tmp_path / 'two')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', '--master_port=29533',
           os.path.join(REPO, 'train.py'), '-opt', TINY_LOCALIZER, '--launcher', 'pytorch', '--force_yml',
           'name=tiny_loc', f'network_g={net}', *_data_overrides(artifact_data), *common,
           'datasets:train:batch_size_per_gpu=2']
    multi = subprocess.run(cmd, cwd=tmp_path / 'two', env=cli_env(), capture_output=True, text=True, timeout=300)
    assert multi.returncode == 0, multi.stderr[-3000:]
    g1 = torch.load(tmp_path / 'one' / 'experiments' / 'tiny_loc' / 'models' / f'net_g_{n_it}.pth', weights_only=True)
    g2 = torch.load(tmp_path / 'two' / 'experiments' / 'tiny_loc' / 'models' / f'net_g_{n_it}.pth', weights_only=True)
    diffs = {k: (g1['params'][k].double() - g2['params'][k].double()).abs().max().item() for k in g1['params']}
    worst = max(diffs.values())
    print(f'localiser DDP 2x2 vs 1x4: max |param / buffer diff| after {n_it} iterations = {worst:.3e}')
    assert worst <= 1e-5, worst
    from conftest import read_losses
    l1, l2 = read_losses(tmp_path / 'one' / 'experiments' / 'tiny_loc'), read_losses(tmp_path / 'two' / 'experiments'
                                                                                       / 'tiny_loc')
    for it in (1, 6):
        assert l1[it] == pytest.approx(l2[it], rel=1e-4)
    assert l1[1]['l_bce'] != l1[6]['l_bce']  # training moved, so the equality above is not trivial
    bn = [k for k in g1['params'] if k.endswith('running_var')]
    assert bn and any(not torch.allclose(g1['params'][k], torch.ones_like(g1['params'][k])) for k in bn)
