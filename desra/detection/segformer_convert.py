"""Convert an mmsegmentation 0.x SegFormer checkpoint (MixVisionTransformer + SegformerHead) to transformers.

The DeSRA authors ran mmseg's ``segformer_mit-b5_640x640_160k_ade20k`` checkpoint. transformers'
``SegformerForSemanticSegmentation`` has the same encoder, and almost the same decode head; this module maps
the weights across. Used by ``scripts/convert_mmseg_segformer.py``.

Output key layout
    :func:`convert_mmseg_state_dict` returns the *checkpoint* layout of transformers SegFormer, i.e. the names
    stored in ``model.safetensors`` by ``save_pretrained`` and used by the ``nvidia/segformer-*`` hub models
    (``segformer.encoder.block.{i}.{j}.attention.self.query`` ... ``decode_head.linear_c.{i}.proj``). Recent
    transformers versions rename the modules in memory (``segformer.stages.{i}.blocks.{j}.attention.q_proj``)
    but still read and write this layout, so it is the version-independent one. :func:`load_converted_model`
    loads such a dict through ``from_pretrained`` and fails on any missing, unexpected or mis-shaped key.

Two differences between mmseg's SegFormer and transformers' (both handled, see :func:`apply_mmseg_compat`):

1. mmseg's ``SegformerHead`` projects each stage with a ``ConvModule`` = 1x1 conv (no bias) + BatchNorm +
   **ReLU**; transformers uses a plain ``Linear``. The BatchNorm (eval mode) is folded into the Linear exactly;
   the ReLU has no slot in transformers, so converted folders carry ``desra_mmseg_compat: true`` in
   ``config.json`` and :func:`apply_mmseg_compat` adds the ReLU back as a forward hook (no new weights).
2. mmseg builds every LayerNorm of MiT with ``eps=1e-6``; transformers uses PyTorch's default ``1e-5``.
   :func:`apply_mmseg_compat` sets ``eps = config.layer_norm_eps`` (1e-6) on every LayerNorm.

So a converted folder loaded with *plain* transformers runs, but not exactly as mmseg did: load it with
``desra.detection.segmenters.SegFormerSegmenter`` (which applies the compat automatically) or call
:func:`apply_mmseg_compat` yourself.

The fusion conv: mmseg concatenates the four projected stages in stage order (0, 1, 2, 3); transformers
concatenates them reversed (``torch.cat(all_hidden_states[::-1])``: 3, 2, 1, 0). The input channels of the
fusion conv are therefore permuted block-wise.
"""
from __future__ import annotations

import os
import shutil
import tempfile

import torch

from desra.detection.ade20k import ADE20K_CLASSES
from desra.errors import CheckpointError, ConfigError

MMSEG_BN_EPS = 1e-5  # mmseg SyncBN / BN default in SegformerHead
MMSEG_LN_EPS = 1e-6  # mmseg MixVisionTransformer norm_cfg=dict(type='LN', eps=1e-6)
COMPAT_FLAG = 'desra_mmseg_compat'

# MiT-b0..b5 (SegFormer paper, Table 6; mmseg configs segformer_mit-b*).
_MIT_VARIANTS = {
    'b0': dict(hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2], decoder_hidden_size=256),
    'b1': dict(hidden_sizes=[64, 128, 320, 512], depths=[2, 2, 2, 2], decoder_hidden_size=256),
    'b2': dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 4, 6, 3], decoder_hidden_size=768),
    'b3': dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 4, 18, 3], decoder_hidden_size=768),
    'b4': dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 8, 27, 3], decoder_hidden_size=768),
    'b5': dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 6, 40, 3], decoder_hidden_size=768),
}
MIT_VARIANTS = tuple(_MIT_VARIANTS)


def ade20k_id2label() -> dict[int, str]:
    return {i: name for i, name in enumerate(ADE20K_CLASSES)}


def segformer_config(variant: str = 'b5', num_labels: int = 150, **overrides):
    """A transformers ``SegformerConfig`` for MiT-``variant`` (b0..b5) with the mmseg compat flag set.

    ``num_labels == 150`` gets the ADE20K class names as ``id2label``. ``overrides`` replace config fields
    (e.g. a tiny test model).
    """
    from transformers import SegformerConfig

    v = str(variant).lower()
    if v.startswith(('mit-', 'mit_')):
        v = v[4:]
    if v not in _MIT_VARIANTS:
        raise ConfigError(f"variant: unknown MiT variant '{variant}'; expected one of {', '.join(MIT_VARIANTS)}")
    kw = dict(num_encoder_blocks=4, num_attention_heads=[1, 2, 5, 8], sr_ratios=[8, 4, 2, 1],
              patch_sizes=[7, 3, 3, 3], strides=[4, 2, 2, 2], mlp_ratios=[4, 4, 4, 4], hidden_act='gelu',
              hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout_prob=0.1,
              drop_path_rate=0.1, layer_norm_eps=MMSEG_LN_EPS, semantic_loss_ignore_index=255,
              num_labels=num_labels)
    kw.update(_MIT_VARIANTS[v])
    kw.update(overrides)
    if 'id2label' not in overrides and kw['num_labels'] == len(ADE20K_CLASSES):
        kw['id2label'] = ade20k_id2label()
    if 'id2label' in kw:
        kw['id2label'] = {int(k): str(n) for k, n in kw['id2label'].items()}
        kw['label2id'] = {n: k for k, n in kw['id2label'].items()}
    config = SegformerConfig(**kw)
    setattr(config, COMPAT_FLAG, True)
    return config


# ----------------------------------------------------------------------------------------------------------
# key layout

def expected_hub_shapes(config) -> dict[str, tuple]:
    """Every key (checkpoint layout) of ``SegformerForSemanticSegmentation(config)`` with its shape."""
    shapes: dict[str, tuple] = {}
    n = config.num_encoder_blocks
    for i in range(n):
        c = config.hidden_sizes[i]
        cin = config.num_channels if i == 0 else config.hidden_sizes[i - 1]
        k, sr, hid = config.patch_sizes[i], config.sr_ratios[i], int(c * config.mlp_ratios[i])
        pe = f'segformer.encoder.patch_embeddings.{i}'
        shapes.update({f'{pe}.proj.weight': (c, cin, k, k), f'{pe}.proj.bias': (c,),
                       f'{pe}.layer_norm.weight': (c,), f'{pe}.layer_norm.bias': (c,)})
        for j in range(config.depths[i]):
            b = f'segformer.encoder.block.{i}.{j}'
            for ln in ('layer_norm_1', 'layer_norm_2'):
                shapes.update({f'{b}.{ln}.weight': (c,), f'{b}.{ln}.bias': (c,)})
            for name in ('query', 'key', 'value'):
                shapes.update({f'{b}.attention.self.{name}.weight': (c, c), f'{b}.attention.self.{name}.bias': (c,)})
            shapes.update({f'{b}.attention.output.dense.weight': (c, c), f'{b}.attention.output.dense.bias': (c,)})
            if sr > 1:
                shapes.update({f'{b}.attention.self.sr.weight': (c, c, sr, sr), f'{b}.attention.self.sr.bias': (c,),
                               f'{b}.attention.self.layer_norm.weight': (c,),
                               f'{b}.attention.self.layer_norm.bias': (c,)})
            shapes.update({f'{b}.mlp.dense1.weight': (hid, c), f'{b}.mlp.dense1.bias': (hid,),
                           f'{b}.mlp.dwconv.dwconv.weight': (hid, 1, 3, 3), f'{b}.mlp.dwconv.dwconv.bias': (hid,),
                           f'{b}.mlp.dense2.weight': (c, hid), f'{b}.mlp.dense2.bias': (c,)})
        for s in ('weight', 'bias'):
            shapes[f'segformer.encoder.layer_norm.{i}.{s}'] = (c,)
    d = config.decoder_hidden_size
    for i in range(n):
        shapes.update({f'decode_head.linear_c.{i}.proj.weight': (d, config.hidden_sizes[i]),
                       f'decode_head.linear_c.{i}.proj.bias': (d,)})
    shapes['decode_head.linear_fuse.weight'] = (d, d * n, 1, 1)
    for s in ('weight', 'bias', 'running_mean', 'running_var'):
        shapes[f'decode_head.batch_norm.{s}'] = (d,)
    shapes['decode_head.batch_norm.num_batches_tracked'] = ()
    shapes['decode_head.classifier.weight'] = (config.num_labels, d, 1, 1)
    shapes['decode_head.classifier.bias'] = (config.num_labels,)
    return shapes


def _describe_mmseg(sd: dict) -> str:
    """'depths [3, 6, 40, 3], hidden sizes [64, ...]' as found in an mmseg state dict (for error hints)."""
    depths: dict[int, int] = {}
    hidden: dict[int, int] = {}
    for k, v in sd.items():
        p = k.split('.')
        if len(p) > 4 and p[0] == 'backbone' and p[1] == 'layers' and p[3] == '1' and p[2].isdigit() \
                and p[4].isdigit():
            depths[int(p[2])] = max(depths.get(int(p[2]), 0), int(p[4]) + 1)
        if len(p) == 5 and p[:2] == ['backbone', 'layers'] and p[3:] == ['0', 'norm', 'weight'] and p[2].isdigit():
            hidden[int(p[2])] = tuple(v.shape)[0]
    if not depths:
        return 'no backbone.layers.* keys (is this an mmseg SegFormer checkpoint?)'
    return (f'depths {[depths[i] for i in sorted(depths)]}, '
            f'hidden sizes {[hidden.get(i) for i in sorted(depths)]}')


def _strip_prefix(sd: dict) -> dict:
    for prefix in ('module.', 'model.'):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def convert_mmseg_state_dict(sd: dict, config, strict: bool = True) -> dict:
    """Map an mmseg 0.x SegFormer ``state_dict`` (MixVisionTransformer + SegformerHead) to transformers.

    Returns a new dict in the transformers *checkpoint* layout (see the module docstring). ``config`` is the
    target ``SegformerConfig`` (see :func:`segformer_config`). Keys of the checkpoint that are not used, keys
    that are missing and tensors of the wrong shape raise a :class:`CheckpointError` that lists them all
    (``strict=False`` ignores unused keys only).
    """
    src = _strip_prefix(dict(sd))
    used: set[str] = set()
    missing: list[str] = []
    out: dict[str, torch.Tensor] = {}

    def take(key):
        if key not in src:
            missing.append(key)
            return None
        used.add(key)
        return src[key]

    def copy(mm, hf):
        t = take(mm)
        if t is not None:
            out[hf] = t

    n = config.num_encoder_blocks
    for i in range(n):
        c = config.hidden_sizes[i]
        L = f'backbone.layers.{i}'
        pe = f'segformer.encoder.patch_embeddings.{i}'
        for s in ('weight', 'bias'):
            copy(f'{L}.0.projection.{s}', f'{pe}.proj.{s}')
            copy(f'{L}.0.norm.{s}', f'{pe}.layer_norm.{s}')
        for j in range(config.depths[i]):
            m = f'{L}.1.{j}'
            b = f'segformer.encoder.block.{i}.{j}'
            for s in ('weight', 'bias'):
                copy(f'{m}.norm1.{s}', f'{b}.layer_norm_1.{s}')
                copy(f'{m}.norm2.{s}', f'{b}.layer_norm_2.{s}')
                copy(f'{m}.attn.attn.out_proj.{s}', f'{b}.attention.output.dense.{s}')
                if config.sr_ratios[i] > 1:
                    copy(f'{m}.attn.sr.{s}', f'{b}.attention.self.sr.{s}')
                    copy(f'{m}.attn.norm.{s}', f'{b}.attention.self.layer_norm.{s}')
                copy(f'{m}.ffn.layers.1.{s}', f'{b}.mlp.dwconv.dwconv.{s}')
                for mm_idx, hf_name in (('0', 'dense1'), ('4', 'dense2')):
                    t = take(f'{m}.ffn.layers.{mm_idx}.{s}')
                    if t is not None:
                        # 1x1 conv (out, in, 1, 1) -> linear (out, in)
                        out[f'{b}.mlp.{hf_name}.{s}'] = t.reshape(t.shape[0], -1) if s == 'weight' else t
            # nn.MultiheadAttention: in_proj = cat(q, k, v) along the output dimension
            for s in ('weight', 'bias'):
                t = take(f'{m}.attn.attn.in_proj_{s}')
                if t is None:
                    continue
                if t.shape[0] != 3 * c:
                    missing.append(f'{m}.attn.attn.in_proj_{s} (shape {tuple(t.shape)}, expected first dim {3 * c})')
                    continue
                for part, name in zip(torch.split(t, c, dim=0), ('query', 'key', 'value')):
                    out[f'{b}.attention.self.{name}.{s}'] = part.clone()
        for s in ('weight', 'bias'):
            copy(f'{L}.2.{s}', f'segformer.encoder.layer_norm.{i}.{s}')

    # decode head: per-stage ConvModule (conv 1x1 no bias + BN [+ ReLU]) -> Linear with the BN folded in
    d = config.decoder_hidden_size
    for i in range(n):
        w = take(f'decode_head.convs.{i}.conv.weight')
        bn = {s: take(f'decode_head.convs.{i}.bn.{s}') for s in ('weight', 'bias', 'running_mean', 'running_var')}
        conv_bias = src.get(f'decode_head.convs.{i}.conv.bias')
        if conv_bias is not None:
            used.add(f'decode_head.convs.{i}.conv.bias')
        if f'decode_head.convs.{i}.bn.num_batches_tracked' in src:
            used.add(f'decode_head.convs.{i}.bn.num_batches_tracked')
        if w is None or any(v is None for v in bn.values()):
            continue
        w64 = w.double().reshape(w.shape[0], -1)
        scale = bn['weight'].double() / torch.sqrt(bn['running_var'].double() + MMSEG_BN_EPS)
        bias = bn['bias'].double() - bn['running_mean'].double() * scale
        if conv_bias is not None:
            bias = bias + conv_bias.double() * scale
        out[f'decode_head.linear_c.{i}.proj.weight'] = (w64 * scale[:, None]).to(w.dtype)
        out[f'decode_head.linear_c.{i}.proj.bias'] = bias.to(w.dtype)

    # fusion ConvModule: mmseg input channels are [stage0 | stage1 | ... ]; transformers' are [stage n-1 | ... | 0]
    w = take('decode_head.fusion_conv.conv.weight')
    if w is not None:
        if w.shape[1] != d * n:
            missing.append(f'decode_head.fusion_conv.conv.weight (shape {tuple(w.shape)}, expected {d * n} input '
                           f'channels)')
        else:
            blocks = torch.split(w, d, dim=1)
            out['decode_head.linear_fuse.weight'] = torch.cat(blocks[::-1], dim=1).contiguous()
    for s in ('weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked'):
        key = f'decode_head.fusion_conv.bn.{s}'
        if s == 'num_batches_tracked' and key not in src:
            out[f'decode_head.batch_norm.{s}'] = torch.tensor(0, dtype=torch.long)
            continue
        copy(key, f'decode_head.batch_norm.{s}')
    for s in ('weight', 'bias'):
        copy(f'decode_head.conv_seg.{s}', f'decode_head.classifier.{s}')

    unused = sorted(k for k in src if k not in used)
    bad_shapes = []
    for k, shape in expected_hub_shapes(config).items():
        if k in out and tuple(out[k].shape) != tuple(shape):
            bad_shapes.append(f'{k}: got {tuple(out[k].shape)}, expected {tuple(shape)}')
    problems = []
    if missing:
        problems.append(f'{len(missing)} missing key(s): {", ".join(missing)}')
    if unused and strict:
        problems.append(f'{len(unused)} unknown key(s): {", ".join(unused)}')
    if bad_shapes:
        problems.append(f'{len(bad_shapes)} shape mismatch(es): {"; ".join(bad_shapes)}')
    if problems:
        raise CheckpointError(
            'the mmseg SegFormer state dict does not match the target config (hidden sizes '
            f'{list(config.hidden_sizes)}, depths {list(config.depths)}); the checkpoint has {_describe_mmseg(src)}. '
            'Check --variant. ' + ' | '.join(problems))
    expected = set(expected_hub_shapes(config))
    assert set(out) == expected, sorted(set(out) ^ expected)  # internal consistency of the two layouts
    return {k: v.contiguous() for k, v in out.items()}


# ----------------------------------------------------------------------------------------------------------
# loading and the mmseg compat patch

def apply_mmseg_compat(model, force: bool = False):
    """Make a converted transformers SegFormer compute exactly what mmseg's does (module docstring, 1. and 2.).

    Applied when ``model.config.desra_mmseg_compat`` is true (or ``force``); idempotent. Returns ``model``.
    """
    from torch import nn

    if not (force or getattr(model.config, COMPAT_FLAG, False)):
        return model
    if getattr(model, '_desra_mmseg_compat_applied', False):
        return model
    eps = float(getattr(model.config, 'layer_norm_eps', MMSEG_LN_EPS))
    for mod in model.modules():
        if isinstance(mod, nn.LayerNorm):
            mod.eps = eps
    head = getattr(model, 'decode_head', None)
    projections = [m for m in (head.modules() if head is not None else ()) if type(m).__name__ == 'SegformerMLP']
    if len(projections) != model.config.num_encoder_blocks:
        raise CheckpointError(f'cannot apply the mmseg decode-head compat: found {len(projections)} SegformerMLP '
                              f'projections, expected {model.config.num_encoder_blocks} (transformers changed?)')
    for proj in projections:
        proj.register_forward_hook(_relu_hook)
    model._desra_mmseg_compat_applied = True
    return model


def _relu_hook(module, inputs, output):
    return torch.relu(output)


def load_converted_model(hub_sd: dict, config):
    """A ``SegformerForSemanticSegmentation`` holding ``hub_sd`` (checkpoint layout), in eval mode.

    Goes through ``from_pretrained`` on a temporary folder so that transformers' own key renaming applies;
    any missing, unexpected or mis-shaped key raises :class:`CheckpointError`. The mmseg compat is *not*
    applied (call :func:`apply_mmseg_compat`).
    """
    from safetensors.torch import save_file
    from transformers import SegformerForSemanticSegmentation

    with tempfile.TemporaryDirectory(prefix='desra_segformer_') as tmp:
        config.save_pretrained(tmp)
        save_file({k: v.detach().cpu().clone().contiguous() for k, v in hub_sd.items()},
                  os.path.join(tmp, 'model.safetensors'), metadata={'format': 'pt'})
        model, info = SegformerForSemanticSegmentation.from_pretrained(tmp, output_loading_info=True)
    bad = {k: sorted(map(str, v)) for k, v in info.items() if k != 'error_msgs' and v}
    if bad or info.get('error_msgs'):
        raise CheckpointError(f'converted SegFormer weights do not load cleanly: {bad} {info.get("error_msgs") or ""}')
    return model.eval()


def save_converted_folder(model, out_dir: str, mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375),
                          overwrite: bool = False) -> str:
    """``save_pretrained(model)`` + ``preprocessor_config.json`` into ``out_dir``, atomically.

    Everything is written into a temporary sibling folder that is renamed to ``out_dir`` at the end; with
    ``overwrite`` an existing ``out_dir`` is replaced (it stays intact if anything fails before the rename).
    """
    import json

    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and not overwrite:
        raise ConfigError(f"--out: {out_dir} already exists; remove it or pass --overwrite")
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f'.{os.path.basename(out_dir)}.', suffix='.tmp', dir=parent)
    try:
        model.save_pretrained(tmp)
        proc = {
            'image_processor_type': 'SegformerImageProcessor',
            'do_resize': False,  # mmseg resizes keeping the ratio to fit (2048, 640): done by desra's segmenter
            'do_rescale': True,
            'rescale_factor': 1 / 255,
            'do_normalize': True,
            'image_mean': [m / 255 for m in mean],
            'image_std': [s / 255 for s in std],
            'do_reduce_labels': True,
        }
        with open(os.path.join(tmp, 'preprocessor_config.json'), 'w', encoding='utf-8') as f:
            json.dump(proc, f, indent=2)
        old = None
        if os.path.exists(out_dir):
            old = tempfile.mkdtemp(prefix=f'.{os.path.basename(out_dir)}.', suffix='.old', dir=parent)
            os.rmdir(old)
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
