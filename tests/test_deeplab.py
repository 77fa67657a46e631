"""DeepLabV3Plus / ResNetEncoder: smp 0.6.0's state-dict layout, forward and messages, checked against an
expected key list and a functional reference written here from smp's documented structure (not from the module).
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from desra.archs.deeplab_arch import DeepLabV3Plus
from desra.archs.resnet_arch import ResNetEncoder
from desra.errors import CheckpointError, ConfigError
from desra.registry import ARCH_REGISTRY

# torchvision's ResNets: block kind and blocks per layer
RESNETS = {'resnet18': ('basic', (2, 2, 2, 2)), 'resnet34': ('basic', (3, 4, 6, 3)),
           'resnet50': ('bottleneck', (3, 4, 6, 3)), 'resnet101': ('bottleneck', (3, 4, 23, 3))}


# ------------------------------------------------------------------------------------------ expected layout

def _bn(p, c):
    return [(f'{p}.weight', (c,)), (f'{p}.bias', (c,)), (f'{p}.running_mean', (c,)), (f'{p}.running_var', (c,)),
            (f'{p}.num_batches_tracked', ())]


def stage_channels(name):
    """Channels of the stem and of layer1..4."""
    c = 1 if RESNETS[name][0] == 'basic' else 4
    return [64, 64 * c, 128 * c, 256 * c, 512 * c]


def expected_encoder(name, in_ch=3):
    """torchvision's ResNet state dict without fc.*, in module order."""
    kind, layers = RESNETS[name]
    out = [('conv1.weight', (64, in_ch, 7, 7))] + _bn('bn1', 64)
    inp = 64
    for li, (planes, n) in enumerate(zip((64, 128, 256, 512), layers), start=1):
        for b in range(n):
            p = f'layer{li}.{b}'
            if kind == 'basic':
                outc = planes
                out += [(f'{p}.conv1.weight', (planes, inp, 3, 3))] + _bn(f'{p}.bn1', planes)
                out += [(f'{p}.conv2.weight', (planes, planes, 3, 3))] + _bn(f'{p}.bn2', planes)
            else:
                outc = 4 * planes
                out += [(f'{p}.conv1.weight', (planes, inp, 1, 1))] + _bn(f'{p}.bn1', planes)
                out += [(f'{p}.conv2.weight', (planes, planes, 3, 3))] + _bn(f'{p}.bn2', planes)
                out += [(f'{p}.conv3.weight', (outc, planes, 1, 1))] + _bn(f'{p}.bn3', outc)
            if b == 0 and (li > 1 or inp != outc):
                out += [(f'{p}.downsample.0.weight', (outc, inp, 1, 1))] + _bn(f'{p}.downsample.1', outc)
            inp = outc
    return out


def _sep(p, cin, cout):
    return [(f'{p}.0.weight', (cin, 1, 3, 3)), (f'{p}.1.weight', (cout, cin, 1, 1))]


def expected_layout(name='resnet34', depth=5, channels=256, separable=True, in_ch=3, classes=1, aux_classes=None):
    e = stage_channels(name)[depth - 1]   # the last used stage
    low = stage_channels(name)[1]         # layer1
    c = channels
    out = [('encoder.' + k, s) for k, s in expected_encoder(name, in_ch)]
    a = 'decoder.aspp.0.convs'
    out += [(f'{a}.0.0.weight', (c, e, 1, 1))] + _bn(f'{a}.0.1', c)
    for i in (1, 2, 3):
        out += _sep(f'{a}.{i}.0', e, c) if separable else [(f'{a}.{i}.0.weight', (c, e, 3, 3))]
        out += _bn(f'{a}.{i}.1', c)
    out += [(f'{a}.4.1.weight', (c, e, 1, 1))] + _bn(f'{a}.4.2', c)
    out += [('decoder.aspp.0.project.0.weight', (c, 5 * c, 1, 1))] + _bn('decoder.aspp.0.project.1', c)
    out += _sep('decoder.aspp.1', c, c) + _bn('decoder.aspp.2', c)
    out += [('decoder.block1.0.weight', (48, low, 1, 1))] + _bn('decoder.block1.1', 48)
    out += _sep('decoder.block2.0', c + 48, c) + _bn('decoder.block2.1', c)
    out += [('segmentation_head.0.weight', (classes, c, 1, 1)), ('segmentation_head.0.bias', (classes,))]
    if aux_classes:
        out += [('classification_head.3.weight', (aux_classes, e)), ('classification_head.3.bias', (aux_classes,))]
    return out


def layout(module):
    return [(k, tuple(v.shape)) for k, v in module.state_dict().items()]


@pytest.mark.parametrize('kwargs, expect', [
    ({}, {}),
    ({'encoder_name': 'resnet18'}, {'name': 'resnet18'}),
    ({'encoder_name': 'resnet50', 'encoder_output_stride': 8}, {'name': 'resnet50'}),
    ({'encoder_name': 'resnet101'}, {'name': 'resnet101'}),
    ({'decoder_atrous_rates': (6, 12, 18), 'decoder_aspp_separable': False, 'decoder_channels': 64},
     {'separable': False, 'channels': 64}),
    ({'in_channels': 6, 'classes': 2}, {'in_ch': 6, 'classes': 2}),
    ({'encoder_depth': 4}, {'depth': 4}),
    ({'encoder_name': 'resnet50', 'encoder_depth': 3, 'decoder_channels': 32}, {'name': 'resnet50', 'depth': 3,
                                                                                 'channels': 32}),
    ({'encoder_name': 'resnet18', 'aux_params': {'classes': 5}}, {'name': 'resnet18', 'aux_classes': 5}),
])
def test_state_dict_layout(kwargs, expect):
    with torch.device('meta'):   # keys and shapes only: skip the initialisation
        net = DeepLabV3Plus(**kwargs)
    assert layout(net) == expected_layout(**expect)


def test_constructor_defaults_are_smps():
    import inspect

    params = inspect.signature(DeepLabV3Plus).parameters
    defaults = {k: p.default for k, p in params.items()}
    assert defaults == dict(encoder_name='resnet34', encoder_depth=5, encoder_weights=None, encoder_output_stride=16,
                            decoder_channels=256, decoder_atrous_rates=(12, 24, 36), decoder_aspp_separable=True,
                            decoder_aspp_dropout=0.5, in_channels=3, classes=1, activation=None, upsampling=4,
                            aux_params=None)
    m = DeepLabV3Plus(encoder_name='resnet18')
    assert m.decoder.aspp[0].project[3].p == 0.5 and m.encoder.output_stride == 16


# ------------------------------------------------------------------------------------- functional reference

def random_model(seed=0, **kwargs):
    """A DeepLabV3Plus in eval mode with seeded random weights and BatchNorm statistics, of moderate scale."""
    with torch.device('meta'):   # built without its (slow, overwritten) initialisation
        model = DeepLabV3Plus(**kwargs)
    model = model.to_empty(device='cpu').eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, v in model.state_dict().items():
            if k.endswith('num_batches_tracked'):
                v.fill_(0)
            elif k.endswith('running_var'):
                v.copy_(torch.rand(v.shape, generator=g, dtype=v.dtype) + 0.5)
            elif k.endswith(('running_mean', 'bias')):
                v.copy_(torch.randn(v.shape, generator=g, dtype=v.dtype) * 0.1)
            elif v.ndim == 1:  # BN weight
                v.copy_(torch.rand(v.shape, generator=g, dtype=v.dtype) * 0.5 + 0.5)
            else:
                v.copy_(torch.randn(v.shape, generator=g, dtype=v.dtype) * (1.0 / v[0].numel()) ** 0.5)
    return model


def _layer_dilations(os_, li, block, rule):
    """(stride, dilation of the 3x3) of block ``block`` of layer ``li``.

    smp: a dilated layer has dilation d on every block and stride 1 everywhere. torchvision's
    replace_stride_with_dilation: stride 1 too, but the first block keeps the previous layer's dilation.
    """
    d = {16: {4: 2}, 8: {3: 2, 4: 4}}[os_]
    nominal = 2 if li > 1 and block == 0 else 1
    if li not in d:
        return nominal, 1
    if rule == 'smp' or block > 0:
        return 1, d[li]
    return 1, d.get(li - 1, 1)


def ref_forward(sd, x, name='resnet34', depth=5, os_=16, rates=(12, 24, 36), separable=True, upsampling=4,
                rule='smp'):
    """DeepLabV3+ on a state dict with F.conv2d / F.batch_norm / F.interpolate (eval mode, no activation)."""
    def bn(t, p):
        return F.batch_norm(t, sd[p + '.running_mean'], sd[p + '.running_var'], sd[p + '.weight'], sd[p + '.bias'],
                            False, 0.0, 1e-5)

    def cbr(t, p_conv, p_bn, **kw):
        return F.relu(bn(F.conv2d(t, sd[p_conv + '.weight'], **kw), p_bn))

    def sep(t, p, dil=1):
        t = F.conv2d(t, sd[p + '.0.weight'], padding=dil, dilation=dil, groups=t.shape[1])
        return F.conv2d(t, sd[p + '.1.weight'])

    kind, layers = RESNETS[name]
    e = 'encoder.'
    t = cbr(x, e + 'conv1', e + 'bn1', stride=2, padding=3)
    feats = [x, t]
    t = F.max_pool2d(t, 3, 2, 1)
    for li in range(1, depth):
        for b in range(layers[li - 1]):
            p = f'{e}layer{li}.{b}.'
            s, d = _layer_dilations(os_, li, b, rule)
            if kind == 'basic':
                y = cbr(t, p + 'conv1', p + 'bn1', stride=s, padding=d, dilation=d)
                y = bn(F.conv2d(y, sd[p + 'conv2.weight'], padding=d, dilation=d), p + 'bn2')
            else:
                y = cbr(t, p + 'conv1', p + 'bn1')
                y = cbr(y, p + 'conv2', p + 'bn2', stride=s, padding=d, dilation=d)
                y = bn(F.conv2d(y, sd[p + 'conv3.weight']), p + 'bn3')
            if p + 'downsample.0.weight' in sd:
                t = bn(F.conv2d(t, sd[p + 'downsample.0.weight'], stride=s), p + 'downsample.1')
            t = F.relu(y + t)
        feats.append(t)

    a = 'decoder.aspp.0.'
    top = feats[-1]
    branches = [cbr(top, a + 'convs.0.0', a + 'convs.0.1')]
    for i, r in enumerate(rates, start=1):
        y = (sep(top, f'{a}convs.{i}.0', r) if separable
             else F.conv2d(top, sd[f'{a}convs.{i}.0.weight'], padding=r, dilation=r))
        branches.append(F.relu(bn(y, f'{a}convs.{i}.1')))
    pooled = cbr(top.mean((2, 3), keepdim=True), a + 'convs.4.1', a + 'convs.4.2')
    branches.append(pooled.expand(-1, -1, *top.shape[-2:]))   # bilinear from 1 x 1 is a constant
    y = cbr(torch.cat(branches, 1), a + 'project.0', a + 'project.1')
    y = F.relu(bn(sep(y, 'decoder.aspp.1'), 'decoder.aspp.2'))
    scale = 4 if os_ == 16 and depth > 3 else 2
    y = F.interpolate(y, size=(y.shape[2] * scale, y.shape[3] * scale), mode='bilinear', align_corners=True)
    low = cbr(feats[2], 'decoder.block1.0', 'decoder.block1.1')
    y = F.relu(bn(sep(torch.cat([y, low], 1), 'decoder.block2.0'), 'decoder.block2.1'))
    y = F.conv2d(y, sd['segmentation_head.0.weight'], sd['segmentation_head.0.bias'])
    if upsampling > 1:
        y = F.interpolate(y, size=(y.shape[2] * upsampling, y.shape[3] * upsampling), mode='bilinear',
                          align_corners=True)
    return y


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))


@pytest.mark.parametrize('kwargs, ref, size', [
    ({}, {}, (64, 96)),
    ({'encoder_name': 'resnet50', 'encoder_output_stride': 8, 'decoder_aspp_separable': False,
      'decoder_atrous_rates': (1, 2, 3), 'decoder_channels': 32},
     {'name': 'resnet50', 'os_': 8, 'separable': False, 'rates': (1, 2, 3)}, (32, 48)),
    ({'encoder_name': 'resnet18', 'decoder_atrous_rates': (1, 2, 3), 'decoder_channels': 64},
     {'name': 'resnet18', 'rates': (1, 2, 3)}, (64, 96)),
    ({'encoder_name': 'resnet18', 'encoder_depth': 4, 'encoder_output_stride': 8, 'decoder_channels': 32},
     {'name': 'resnet18', 'depth': 4, 'os_': 8}, (32, 48)),
    ({'encoder_name': 'resnet18', 'encoder_depth': 3, 'decoder_channels': 32, 'upsampling': 2},
     {'name': 'resnet18', 'depth': 3, 'upsampling': 2}, (32, 48)),
])
def test_forward_matches_functional_reference(kwargs, ref, size):
    m = random_model(**kwargs)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 3, *size, generator=g)
    with torch.no_grad():
        y = m(x)
    expect = ref_forward(m.state_dict(), x, **ref)
    assert y.shape == expect.shape
    _close(y, expect)


@pytest.mark.parametrize('name, os_', [('resnet50', 16), ('resnet18', 8)])
def test_dilation_is_smps_not_torchvisions(name, os_):
    """smp dilates every block of a dilated layer, the first block's strided conv and downsample included."""
    m = random_model(encoder_name=name, encoder_output_stride=os_, decoder_atrous_rates=(1, 2, 3),
                     decoder_channels=32)
    rates = {16: {'layer4': 2}, 8: {'layer3': 2, 'layer4': 4}}[os_]
    for layer in ('layer1', 'layer2', 'layer3', 'layer4'):
        for n, conv in getattr(m.encoder, layer).named_modules():
            if not isinstance(conv, nn.Conv2d):
                continue
            k = conv.kernel_size[0]
            if layer in rates:
                d = rates[layer]
                assert (conv.stride, conv.dilation, conv.padding) == ((1, 1), (d, d), (k // 2 * d,) * 2), (layer, n)
            else:
                assert conv.dilation == (1, 1) and conv.padding == (k // 2,) * 2, (layer, n)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = m(x)
    kw = dict(name=name, os_=os_, rates=(1, 2, 3))
    smp_rule, tv_rule = ref_forward(m.state_dict(), x, **kw), ref_forward(m.state_dict(), x, rule='torchvision', **kw)
    _close(y, smp_rule)
    assert (y - tv_rule).abs().max() > 1e-3 * y.abs().max()


# ------------------------------------------------------------------------------------------ outputs, errors

def test_output_shape_activation_and_aux():
    x = torch.rand(2, 3, 32, 48)
    m = DeepLabV3Plus(encoder_name='resnet18', classes=2, activation='sigmoid', decoder_channels=32).eval()
    with torch.no_grad():
        y = m(x)
    assert y.shape == (2, 2, 32, 48) and y.dtype == torch.float32
    assert (y > 0).all() and (y < 1).all()
    m = DeepLabV3Plus(encoder_name='resnet18', decoder_channels=32, activation='softmax2d', classes=3,
                      aux_params={'classes': 4, 'activation': 'sigmoid'}).eval()
    with torch.no_grad():
        masks, labels = m(x)
    assert masks.shape == (2, 3, 32, 48) and labels.shape == (2, 4)
    torch.testing.assert_close(masks.sum(1), torch.ones(2, 32, 48))
    m.train()(x)[0].mean().backward()   # trains (BatchNorm with batch 2)


def test_divisibility_error():
    m = DeepLabV3Plus(encoder_name='resnet18', decoder_channels=32).eval()
    with pytest.raises(RuntimeError) as e:
        m(torch.zeros(1, 3, 50, 64))
    assert str(e.value) == ('Wrong input shape height=50, width=64. Expected image height and width divisible by 16. '
                            'Consider pad your images to shape (64, 64).')
    m = DeepLabV3Plus(encoder_name='resnet18', encoder_depth=3, encoder_output_stride=16, decoder_channels=32).eval()
    assert m.encoder.output_stride == 8
    m(torch.zeros(1, 3, 40, 24))
    with pytest.raises(RuntimeError, match=r'height=40, width=20\. .*divisible by 8\. .*shape \(40, 24\)\.$'):
        m(torch.zeros(1, 3, 40, 20))


def test_bad_options():
    with pytest.raises(ValueError) as e:
        DeepLabV3Plus(encoder_name='efficientnet-b0')
    assert str(e.value) == "encoder_name 'efficientnet-b0': unknown encoder; accepted: resnet18, resnet34, resnet50, " \
                           "resnet101"
    with pytest.raises(ConfigError) as e:
        ARCH_REGISTRY.build({'type': 'DeepLabV3Plus', 'encoder_name': 'resnet152'}, 'network_l')
    assert str(e.value).startswith("network_l: encoder_name 'resnet152': unknown encoder; accepted: resnet18")
    with pytest.raises(ValueError, match=r'^DeeplabV3Plus support output stride 8 or 16, got 32\.$'):
        DeepLabV3Plus(encoder_output_stride=32)
    with pytest.raises(ValueError, match=r'^Encoder depth for DeepLabV3Plus decoder cannot be less than 3, got 2\.$'):
        DeepLabV3Plus(encoder_name='resnet18', encoder_depth=2)
    with pytest.raises(ValueError, match='expected 3 dilation rates'):
        DeepLabV3Plus(encoder_name='resnet18', decoder_atrous_rates=(6, 12))
    for name, f in (('resnet34', 'resnet34-b627a593.pth'), ('resnet50', 'resnet50-0676ba61.pth')):
        with pytest.raises(ValueError) as e:
            DeepLabV3Plus(encoder_name=name, encoder_weights='imagenet')
        msg = str(e.value)
        assert '\n' not in msg and f"download torchvision's {f}" in msg and 'pass its path as encoder_weights' in msg
    net = ARCH_REGISTRY.build({'type': 'DeepLabV3Plus', 'encoder_name': 'resnet18', 'decoder_channels': 16}, 'n')
    assert isinstance(net, DeepLabV3Plus) and ARCH_REGISTRY.get('ResNetEncoder') is ResNetEncoder


def _torchvision_file(tmp_path, name='resnet18', drop=(), seed=0):
    """A torchvision-format ResNet state dict with random values (fc included), written from the expected keys."""
    g = torch.Generator().manual_seed(seed)
    sd = {k: (torch.tensor(0) if k.endswith('num_batches_tracked') else torch.randn(s, generator=g))
          for k, s in expected_encoder(name) if k not in drop}
    sd['fc.weight'] = torch.randn(1000, stage_channels(name)[-1], generator=g)
    sd['fc.bias'] = torch.randn(1000, generator=g)
    path = tmp_path / f'{name}.pth'
    torch.save(sd, path)
    return path, sd


def test_encoder_weights_file(tmp_path):
    path, sd = _torchvision_file(tmp_path)
    m = DeepLabV3Plus(encoder_name='resnet18', encoder_weights=str(path), decoder_channels=16)
    enc = m.encoder.state_dict()
    assert all(torch.equal(enc[k], sd[k]) for k, _ in expected_encoder('resnet18'))
    w = sd['conv1.weight']
    m6 = DeepLabV3Plus(encoder_name='resnet18', encoder_weights=path, in_channels=6, decoder_channels=16)
    torch.testing.assert_close(m6.encoder.conv1.weight.detach(), torch.cat([w, w], 1) * 0.5)
    m1 = DeepLabV3Plus(encoder_name='resnet18', encoder_weights=path, in_channels=1, decoder_channels=16)
    torch.testing.assert_close(m1.encoder.conv1.weight.detach(), w.sum(1, keepdim=True))
    assert m6.eval()(torch.rand(1, 6, 32, 32)).shape == (1, 1, 32, 32)
    torch.testing.assert_close(m6.encoder.layer1[0].conv1.weight.detach(), sd['layer1.0.conv1.weight'])


def test_encoder_weights_wrong_file(tmp_path):
    path, _ = _torchvision_file(tmp_path, drop=('conv1.weight', 'layer4.1.bn2.running_var'))
    with pytest.raises(CheckpointError) as e:
        DeepLabV3Plus(encoder_name='resnet18', encoder_weights=str(path))
    msg = str(e.value)
    assert '\n' not in msg and msg.endswith('2 key(s) missing: conv1.weight, layer4.1.bn2.running_var')
    assert "torchvision's ResNet-18 ImageNet weights (resnet18-f37072fd.pth)" in msg
    path, _ = _torchvision_file(tmp_path, name='resnet18')
    with pytest.raises(CheckpointError, match=r'key\(s\) missing: layer1\.0\.conv3\.weight'):  # resnet18 file, resnet50
        DeepLabV3Plus(encoder_name='resnet50', encoder_weights=str(path))
    with pytest.raises(CheckpointError, match='does not exist'):
        DeepLabV3Plus(encoder_name='resnet18', encoder_weights=str(tmp_path / 'nope.pth'))
