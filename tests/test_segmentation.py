"""SegFormer segmenter (mmseg test pipeline), the 'none' segmenter, and the mmseg -> transformers converter.

Everything runs offline on tiny random-init SegFormers built here.
"""
import json
import logging
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from desra.detection.ade20k import ADE20K_CLASSES
from desra.detection.segformer_convert import (apply_mmseg_compat, convert_mmseg_state_dict, expected_hub_shapes,
                                               load_converted_model, save_converted_folder,
                                               segformer_config)
from desra.detection.segmenters import (DEFAULT_MODEL, NoSegmenter, SegFormerSegmenter, build_segmenter,
                                        mmseg_rescale_size)
from desra.errors import CheckpointError, ConfigError
from conftest import run_script

transformers = pytest.importorskip('transformers')
from transformers import SegformerConfig, SegformerForSemanticSegmentation  # noqa: E402

MEAN = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
STD = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
TINY = dict(hidden_sizes=[8, 16, 24, 32], depths=[1, 2, 1, 1], num_attention_heads=[1, 2, 1, 2],
            sr_ratios=[8, 4, 2, 1], decoder_hidden_size=16)


def tiny_config(num_labels=150):
    kw = dict(num_encoder_blocks=4, num_labels=num_labels, **TINY)
    if num_labels == 150:
        kw['id2label'] = {i: c for i, c in enumerate(ADE20K_CLASSES)}
        kw['label2id'] = {c: i for i, c in enumerate(ADE20K_CLASSES)}
    return SegformerConfig(**kw)


def randomize(model, seed=0):
    """Random weights everywhere (not the structured default init), positive BN variances."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            offset = 1.0 if 'norm' in name and name.endswith('weight') else 0.0
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.ndim > 1 else 0.5) + offset)
        for name, b in model.named_buffers():
            if name.endswith('running_mean'):
                b.copy_(torch.randn(b.shape, generator=g) * 0.2)
            elif name.endswith('running_var'):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
        # centre every class's logit on a calibration image, so that the argmax varies across an image
        x = (smooth_image(64, 64, 99)[None] * 255 - MEAN) / STD
        model.eval()
        model.decode_head.classifier.bias -= model(pixel_values=x).logits.mean(dim=(0, 2, 3))
    return model


def smooth_image(h, w, seed):
    """A 3 x h x w image in [0, 1] with large-scale structure (so labels vary across it)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, 5, 6, generator=g)
    img = F.interpolate(base, size=(h, w), mode='bicubic', align_corners=False)
    img = img + 0.1 * torch.rand(1, 3, h, w, generator=g)
    return img.clamp(0, 1)[0]


@pytest.fixture(scope='module')
def tiny_folder(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp('segformer_tiny'))
    model = randomize(SegformerForSemanticSegmentation(tiny_config()))
    model.save_pretrained(folder)
    return folder, model


def reference_logits(model, img, scale=(2048, 640)):
    """The mmseg test pipeline written out: keep-ratio factor, bilinear resize, normalise, forward."""
    h, w = img.shape[-2:]
    f = min(max(scale) / max(h, w), min(scale) / min(h, w))
    size = (int(h * f + 0.5), int(w * f + 0.5))
    x = F.interpolate(img[None].float() * 255, size=size, mode='bilinear', align_corners=False)
    x = (x - MEAN) / STD
    with torch.no_grad():
        return model(pixel_values=x).logits, size


def reference_labels(model, img, scale=(2048, 640)):
    """(labels, logits) of the mmseg whole-image pipeline."""
    logits, size = reference_logits(model, img, scale)
    up = F.interpolate(logits, size=size, mode='bilinear', align_corners=False)  # mmseg encode_decode
    up = F.interpolate(up, size=tuple(img.shape[-2:]), mode='bilinear', align_corners=False)  # rescale to ori
    return up.argmax(1)[0], logits


# --------------------------------------------------------------------------------------------- segmenter

def test_rescale_size_respects_scale():
    h, w = mmseg_rescale_size(100, 3000)
    assert (h, w) == (68, 2048)
    assert max(h, w) <= 2048 and min(h, w) <= 640
    assert mmseg_rescale_size(3000, 100) == (2048, 68)
    assert mmseg_rescale_size(1500, 2000) == (640, 853)  # short side is the limit
    assert mmseg_rescale_size(37, 53) == (640, 917)  # small images are enlarged, as mmseg does
    assert mmseg_rescale_size(640, 960) == (640, 960)


def test_segformer_matches_manual_pipeline(tiny_folder):
    folder, model = tiny_folder
    seg = build_segmenter({'type': 'segformer', 'model': folder}, device='cpu')
    assert isinstance(seg, SegFormerSegmenter)
    assert seg.resized_size(100, 3000) == (68, 2048)
    assert seg.mean == pytest.approx((123.675, 116.28, 103.53)) and seg.std == pytest.approx((58.395, 57.12, 57.375))
    images = [smooth_image(37, 53, 1), smooth_image(64, 48, 2)]
    labels = seg(images)
    assert isinstance(labels, list) and len(labels) == 2
    for img, lab in zip(images, labels):
        assert lab.shape == img.shape[-2:]
        assert lab.dtype == torch.int64 and lab.device.type == 'cpu'
        assert 0 <= int(lab.min()) and int(lab.max()) < 150
        ref, ref_logits = reference_labels(model, img)
        assert len(torch.unique(ref)) > 2  # the check below is not trivially satisfied
        assert torch.equal(lab, ref)
        size = seg.resized_size(*img.shape[-2:])
        assert min(size) == 640  # these small images are enlarged so that the short side is 640
        assert tuple(ref_logits.shape[-2:]) == ((size[0] + 3) // 4, (size[1] + 3) // 4)
    assert torch.equal(seg.logits(images[1][None]), ref_logits)

    # a batch tensor (two images of one size, run together) and numpy uint8 HWC input (smaller scale: faster)
    seg = SegFormerSegmenter(model=folder, device='cpu', scale=(192, 96))
    seg2 = SegFormerSegmenter(model=folder, device='cpu', batch_size=2, scale=(192, 96))
    batch = torch.stack([smooth_image(40, 30, 3), smooth_image(40, 30, 4)])
    out = seg2(batch)
    assert out.shape == (2, 40, 30) and out.dtype == torch.int64
    single = torch.stack([seg(im[None])[0] for im in batch])
    assert (out == single).float().mean() > 0.999
    u8 = (batch[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    lab_np = seg(u8)
    assert lab_np.shape == (40, 30)
    assert torch.equal(lab_np, seg(torch.from_numpy(u8).permute(2, 0, 1).float()[None] / 255)[0])


def test_segformer_reads_preprocessor_config_and_dtype_fallback(tiny_folder, tmp_path, caplog):
    _, model = tiny_folder
    custom = tmp_path / 'custom'
    model.save_pretrained(str(custom))
    (custom / 'preprocessor_config.json').write_text(json.dumps(
        {'do_normalize': True, 'do_rescale': True, 'rescale_factor': 1 / 255,
         'image_mean': [0.5, 0.5, 0.5], 'image_std': [0.25, 0.25, 0.25]}))
    with caplog.at_level(logging.WARNING):
        seg = SegFormerSegmenter(model=str(custom), device='cpu', dtype='float16', scale=[256, 128])
    assert seg.dtype == torch.float32 and 'float32' in caplog.text
    assert seg.mean == pytest.approx((127.5,) * 3) and seg.std == pytest.approx((63.75,) * 3)
    assert seg.resized_size(100, 300) == (85, 256)
    lab = seg(smooth_image(100, 300, 5)[None])
    assert lab.shape == (1, 100, 300)


def test_segformer_config_errors(tmp_path, monkeypatch):
    bad = tmp_path / 'ade19'
    SegformerForSemanticSegmentation(tiny_config(num_labels=19)).save_pretrained(str(bad))
    with pytest.raises(ConfigError, match=r'segmenter\.model.*19 labels'):
        build_segmenter({'type': 'segformer', 'model': str(bad)}, device='cpu')
    pth = tmp_path / 'segformer.pth'
    pth.write_bytes(b'x')
    with pytest.raises(CheckpointError, match='convert_mmseg_segformer.py'):
        build_segmenter({'type': 'segformer', 'model': str(pth)}, device='cpu')
    with pytest.raises(CheckpointError, match='does not exist'):
        build_segmenter({'type': 'segformer', 'model': str(tmp_path / 'nope' / 'folder')}, device='cpu')
    with pytest.raises(ConfigError, match=r'segmenter\.dtype'):
        build_segmenter({'type': 'segformer', 'model': str(bad), 'dtype': 'int8'}, device='cpu')
    with pytest.raises(ConfigError, match=r'segmenter\.scal'):
        build_segmenter({'type': 'segformer', 'model': str(bad), 'scal': [1, 2]}, device='cpu')


def test_none_segmenter_and_unknown_type():
    for opt in (None, {'type': 'none'}):
        seg = build_segmenter(opt, device='cpu')
        assert isinstance(seg, NoSegmenter)
        assert seg(torch.rand(1, 3, 8, 8)) is None
    with pytest.raises(ConfigError) as e:
        build_segmenter({'type': 'segformr'}, key_path='segmenter')
    assert 'segmenter.type' in str(e.value) and "'segformer'" in str(e.value)


def test_hub_id_offline_gives_advice(monkeypatch):
    try:
        from huggingface_hub import try_to_load_from_cache
        if isinstance(try_to_load_from_cache(DEFAULT_MODEL, 'config.json'), str):
            pytest.skip(f'{DEFAULT_MODEL} is in the local hub cache')
    except ImportError:
        pass
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    with pytest.raises(CheckpointError) as e:
        build_segmenter({'type': 'segformer', 'model': DEFAULT_MODEL}, device='cpu')
    msg = str(e.value)
    for part in ('segmenter.model', 'huggingface-cli download', 'save_pretrained', 'convert_mmseg_segformer.py',
                 DEFAULT_MODEL):
        assert part in msg, part


# --------------------------------------------------------------------------------------------- converter

def hub_state_dict(model, folder):
    """The on-disk (checkpoint) key layout that save_pretrained writes, whatever the in-memory names are."""
    from safetensors.torch import load_file
    model.save_pretrained(str(folder))
    return load_file(os.path.join(str(folder), 'model.safetensors'))


def to_mmseg(hub, config, seed=1):
    """Inverse mapping written independently: transformers checkpoint layout -> mmseg 0.x SegFormer layout.

    The per-stage decode convs get a random BatchNorm whose folding gives back the transformers Linear.
    """
    g = torch.Generator().manual_seed(seed)
    mm = {}
    n, d = config.num_encoder_blocks, config.decoder_hidden_size
    for i in range(n):
        for s in ('weight', 'bias'):
            mm[f'backbone.layers.{i}.0.projection.{s}'] = hub[f'segformer.encoder.patch_embeddings.{i}.proj.{s}']
            mm[f'backbone.layers.{i}.0.norm.{s}'] = hub[f'segformer.encoder.patch_embeddings.{i}.layer_norm.{s}']
            mm[f'backbone.layers.{i}.2.{s}'] = hub[f'segformer.encoder.layer_norm.{i}.{s}']
        for j in range(config.depths[i]):
            b, m = f'segformer.encoder.block.{i}.{j}', f'backbone.layers.{i}.1.{j}'
            for s in ('weight', 'bias'):
                mm[f'{m}.norm1.{s}'] = hub[f'{b}.layer_norm_1.{s}']
                mm[f'{m}.norm2.{s}'] = hub[f'{b}.layer_norm_2.{s}']
                mm[f'{m}.attn.attn.in_proj_{s}'] = torch.cat([hub[f'{b}.attention.self.{q}.{s}']
                                                              for q in ('query', 'key', 'value')])
                mm[f'{m}.attn.attn.out_proj.{s}'] = hub[f'{b}.attention.output.dense.{s}']
                if config.sr_ratios[i] > 1:
                    mm[f'{m}.attn.sr.{s}'] = hub[f'{b}.attention.self.sr.{s}']
                    mm[f'{m}.attn.norm.{s}'] = hub[f'{b}.attention.self.layer_norm.{s}']
                mm[f'{m}.ffn.layers.1.{s}'] = hub[f'{b}.mlp.dwconv.dwconv.{s}']
            mm[f'{m}.ffn.layers.0.weight'] = hub[f'{b}.mlp.dense1.weight'][:, :, None, None]
            mm[f'{m}.ffn.layers.0.bias'] = hub[f'{b}.mlp.dense1.bias']
            mm[f'{m}.ffn.layers.4.weight'] = hub[f'{b}.mlp.dense2.weight'][:, :, None, None]
            mm[f'{m}.ffn.layers.4.bias'] = hub[f'{b}.mlp.dense2.bias']
    for i in range(n):
        w = hub[f'decode_head.linear_c.{i}.proj.weight'].double()
        bias = hub[f'decode_head.linear_c.{i}.proj.bias'].double()
        gamma = torch.rand(d, generator=g, dtype=torch.float64) + 0.5
        var = torch.rand(d, generator=g, dtype=torch.float64) + 0.5
        mean = torch.randn(d, generator=g, dtype=torch.float64)
        s = gamma / torch.sqrt(var + 1e-5)
        mm[f'decode_head.convs.{i}.conv.weight'] = (w / s[:, None]).float()[:, :, None, None]
        mm[f'decode_head.convs.{i}.bn.weight'] = gamma.float()
        mm[f'decode_head.convs.{i}.bn.bias'] = (bias + mean * s).float()
        mm[f'decode_head.convs.{i}.bn.running_mean'] = mean.float()
        mm[f'decode_head.convs.{i}.bn.running_var'] = var.float()
        mm[f'decode_head.convs.{i}.bn.num_batches_tracked'] = torch.tensor(160000)
    # transformers' fuse input is [stage n-1 | ... | stage 0]; mmseg's is [stage 0 | ... | stage n-1]
    blocks = torch.split(hub['decode_head.linear_fuse.weight'], d, dim=1)
    mm['decode_head.fusion_conv.conv.weight'] = torch.cat(blocks[::-1], dim=1)
    for s in ('weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked'):
        mm[f'decode_head.fusion_conv.bn.{s}'] = hub[f'decode_head.batch_norm.{s}']
    for s in ('weight', 'bias'):
        mm[f'decode_head.conv_seg.{s}'] = hub[f'decode_head.classifier.{s}']
    return {k: v.clone() for k, v in mm.items()}


def mmseg_forward(encoder_model, mm, x, n):
    """mmseg's SegformerHead written out (ConvModule = conv + BN + ReLU; concat in stage order) on MiT features.

    ``encoder_model`` is the original transformers model with mmseg's LayerNorm eps (1e-6); its encoder is
    MixVisionTransformer with the same weights (checked tensor by tensor in the test).
    """
    with torch.no_grad():
        feats = encoder_model.segformer(x, output_hidden_states=True).hidden_states
        outs = []
        for i in range(n):
            y = F.conv2d(feats[i], mm[f'decode_head.convs.{i}.conv.weight'])
            bn = f'decode_head.convs.{i}.bn'
            y = F.batch_norm(y, mm[f'{bn}.running_mean'], mm[f'{bn}.running_var'], mm[f'{bn}.weight'],
                             mm[f'{bn}.bias'], eps=1e-5)
            y = F.interpolate(F.relu(y), size=feats[0].shape[2:], mode='bilinear', align_corners=False)
            outs.append(y)
        y = F.conv2d(torch.cat(outs, dim=1), mm['decode_head.fusion_conv.conv.weight'])
        y = F.relu(F.batch_norm(y, mm['decode_head.fusion_conv.bn.running_mean'],
                                mm['decode_head.fusion_conv.bn.running_var'], mm['decode_head.fusion_conv.bn.weight'],
                                mm['decode_head.fusion_conv.bn.bias'], eps=1e-5))
        return F.conv2d(y, mm['decode_head.conv_seg.weight'], mm['decode_head.conv_seg.bias'])


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
    config = segformer_config('b0', **TINY)
    model = randomize(SegformerForSemanticSegmentation(config), seed=3)
    hub = hub_state_dict(model, tmp_path_factory.mktemp('orig'))
    mm = to_mmseg(hub, config)
    return config, model, hub, mm


def test_segformer_config_variants():
    b5 = segformer_config('b5')
    assert list(b5.hidden_sizes) == [64, 128, 320, 512] and list(b5.depths) == [3, 6, 40, 3]
    assert list(b5.num_attention_heads) == [1, 2, 5, 8] and list(b5.sr_ratios) == [8, 4, 2, 1]
    assert b5.decoder_hidden_size == 768 and b5.num_labels == 150 and b5.id2label[2] == 'sky'
    b0 = segformer_config('b0')
    assert list(b0.hidden_sizes) == [32, 64, 160, 256] and b0.decoder_hidden_size == 256
    assert segformer_config('b1').decoder_hidden_size == 256 and segformer_config('b2').decoder_hidden_size == 768
    with pytest.raises(ConfigError, match='b6'):
        segformer_config('b6')


def test_convert_roundtrip_and_logits(converted):
    config, _, hub, mm = converted
    # the layout the converter writes is the one transformers really saves
    assert {k: tuple(v.shape) for k, v in hub.items()} == expected_hub_shapes(config)
    out = convert_mmseg_state_dict(mm, config)
    assert set(out) == set(hub)
    for k, v in hub.items():
        if '.linear_c.' in k:  # BatchNorm folded into the Linear: float rounding only
            assert torch.allclose(out[k], v, atol=1e-5, rtol=1e-5), k
        else:
            assert torch.equal(out[k], v), k

    conv = apply_mmseg_compat(load_converted_model(out, config))
    assert all(m.eps == 1e-6 for m in conv.modules() if isinstance(m, torch.nn.LayerNorm))
    ref_model = randomize(SegformerForSemanticSegmentation(config), seed=3)
    for m in ref_model.modules():
        if isinstance(m, torch.nn.LayerNorm):
            m.eps = 1e-6
    x = (torch.rand(2, 3, 45, 61) * 255 - MEAN) / STD
    ref = mmseg_forward(ref_model, mm, x, config.num_encoder_blocks)
    with torch.no_grad():
        got = conv(pixel_values=x).logits
    assert got.shape == ref.shape
    assert torch.allclose(got, ref, atol=1e-4, rtol=1e-4), (got - ref).abs().max()

    # the test is sensitive: no block permutation of the fusion conv, or no stage ReLU, changes the logits
    naive = dict(out)
    naive['decode_head.linear_fuse.weight'] = mm['decode_head.fusion_conv.conv.weight']
    naive_model = apply_mmseg_compat(load_converted_model(naive, config))
    plain = load_converted_model(out, config)
    with torch.no_grad():
        assert not torch.allclose(naive_model(pixel_values=x).logits, ref, atol=1e-3)
        assert not torch.allclose(plain(pixel_values=x).logits, ref, atol=1e-3)


def test_convert_reports_unknown_and_missing_keys(converted):
    config, _, _, mm = converted
    extra = dict(mm)
    extra['decode_head.extra_conv.weight'] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r'decode_head\.extra_conv\.weight'):
        convert_mmseg_state_dict(extra, config)
    missing = dict(mm)
    del missing['backbone.layers.1.1.1.attn.attn.in_proj_weight']
    with pytest.raises(CheckpointError, match=r'backbone\.layers\.1\.1\.1\.attn\.attn\.in_proj_weight'):
        convert_mmseg_state_dict(missing, config)
    with pytest.raises(CheckpointError, match=r'--variant'):
        convert_mmseg_state_dict(mm, segformer_config('b0'))


def test_convert_script_end_to_end(converted, tmp_path):
    config, _, _, mm = converted
    ckpt = tmp_path / 'segformer_tiny_mmseg.pth'
    torch.save({'state_dict': mm, 'meta': {}}, str(ckpt))
    out = tmp_path / 'pretrained' / 'segformer-tiny-ade-mmseg'
    args = ['--checkpoint', str(ckpt), '--out', str(out), '--config-json', json.dumps(TINY)]
    r = run_script('scripts/convert_mmseg_segformer.py', args, cwd=str(tmp_path), timeout=120)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(out)) == ['config.json', 'model.safetensors', 'preprocessor_config.json']
    assert not [p for p in os.listdir(out.parent) if p.startswith('.')]  # no temporary folder left behind
    assert json.loads((out / 'config.json').read_text())['desra_mmseg_compat'] is True

    seg = build_segmenter({'type': 'segformer', 'model': str(out)}, device='cpu')
    assert seg.mean == pytest.approx((123.675, 116.28, 103.53)) and seg.std == pytest.approx((58.395, 57.12, 57.375))
    assert seg.id2label[149] == 'flag'
    img = smooth_image(33, 47, 7)
    ref_model = randomize(SegformerForSemanticSegmentation(config), seed=3)
    for m in ref_model.modules():
        if isinstance(m, torch.nn.LayerNorm):
            m.eps = 1e-6
    size = (round(33 * 640 / 33), round(47 * 640 / 33))  # the short side (33) is scaled to 640
    x = F.interpolate(img[None] * 255, size=size, mode='bilinear', align_corners=False)
    ref = mmseg_forward(ref_model, mm, (x - MEAN) / STD, config.num_encoder_blocks)
    assert torch.allclose(seg.logits(img[None]), ref, atol=1e-4, rtol=1e-4)
    assert seg(img[None]).shape == (1, 33, 47)

    # an existing output folder is refused unless --overwrite; a bad key is listed, nothing is overwritten
    with pytest.raises(ConfigError, match='already exists'):
        save_converted_folder(seg.model, str(out))
    bad = dict(mm)
    bad['backbone.layers.9.0.projection.weight'] = torch.zeros(1)
    torch.save({'state_dict': bad, 'meta': {}}, str(ckpt))
    r = run_script('scripts/convert_mmseg_segformer.py', args + ['--overwrite'], cwd=str(tmp_path), timeout=120)
    assert r.returncode == 2 and 'backbone.layers.9.0.projection.weight' in r.stderr
    assert (out / 'model.safetensors').is_file()  # the earlier output is untouched
