#!/usr/bin/env python
"""Convert an mmsegmentation 0.x SegFormer checkpoint to a transformers folder usable offline by desra.

    python scripts/convert_mmseg_segformer.py \\
        --checkpoint segformer_mit-b5_640x640_160k_ade20k_20220617_203542-940a6bd8.pth \\
        --out pretrained/segformer-b5-ade-mmseg [--variant b5]

then set ``segmenter.model: pretrained/segformer-b5-ade-mmseg`` in the detection YAML.

The output folder holds ``config.json`` + ``model.safetensors`` (``save_pretrained`` of a
``SegformerForSemanticSegmentation``) and a ``preprocessor_config.json`` with mmseg's normalisation; labels
are named after the ADE20K classes. mmseg's decode head has a ReLU after each per-stage projection and its
LayerNorms use eps 1e-6: ``config.json`` carries ``desra_mmseg_compat: true`` and desra's ``segformer``
segmenter restores both (see ``desra/detection/segformer_convert.py``). The folder is written atomically.

``--config-json`` replaces ``--variant`` with a JSON object of ``SegformerConfig`` fields (tests, custom models).
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from desra.cli import script_parser  # noqa: E402
from desra.errors import CheckpointError, ConfigError, UserError  # noqa: E402


def parse_args(argv=None):
    p = script_parser(__doc__)
    p.add_argument('--checkpoint', required=True, help='mmseg 0.x checkpoint (.pth with a state_dict)')
    p.add_argument('--out', required=True, help='output folder (must not exist unless --overwrite)')
    p.add_argument('--variant', default='b5', help='MiT variant b0..b5 (default b5)')
    p.add_argument('--num-labels', type=int, default=150, help='classes of the decode head (ADE20K: 150)')
    p.add_argument('--config-json', default=None,
                   help='JSON object (or a path to a .json file) of SegformerConfig fields overriding the variant')
    p.add_argument('--overwrite', action='store_true', help='replace an existing --out folder')
    return p.parse_args(argv)


def load_mmseg_state_dict(path: str) -> dict:
    import torch

    if not os.path.isfile(path):
        raise CheckpointError(f'--checkpoint: {path} does not exist')
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f'--checkpoint: cannot read {path} as a PyTorch checkpoint: {e}') from None
    if isinstance(ckpt, dict) and isinstance(ckpt.get('state_dict'), dict):
        sd = ckpt['state_dict']
    elif isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        sd = ckpt  # a bare state dict
    else:
        keys = list(ckpt)[:10] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"--checkpoint: {path} has no 'state_dict' (found {keys}); expected an mmseg 0.x "
                              "checkpoint {'state_dict': ..., 'meta': ...}")
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f'--checkpoint: non-tensor entries in the state dict: {", ".join(bad[:10])}')
    return sd


def main(argv=None) -> int:
    args = parse_args(argv)
    from desra.detection.segformer_convert import (apply_mmseg_compat, convert_mmseg_state_dict,
                                                   load_converted_model, save_converted_folder, segformer_config)

    overrides = {}
    if args.config_json:
        text = args.config_json
        if os.path.isfile(text):
            with open(text, encoding='utf-8') as f:
                text = f.read()
        try:
            overrides = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f'--config-json: not valid JSON: {e}') from None
        if not isinstance(overrides, dict):
            raise ConfigError('--config-json: expected a JSON object of SegformerConfig fields')
    num_labels = overrides.pop('num_labels', args.num_labels)
    config = segformer_config(args.variant, num_labels=num_labels, **overrides)

    sd = load_mmseg_state_dict(args.checkpoint)
    hub_sd = convert_mmseg_state_dict(sd, config)
    model = load_converted_model(hub_sd, config)
    apply_mmseg_compat(model)  # checks the decode head can take the compat ReLU
    out = save_converted_folder(model, args.out, overwrite=args.overwrite)
    n_params = sum(v.numel() for v in hub_sd.values())
    print(f'Converted {len(sd)} mmseg tensors -> {len(hub_sd)} transformers tensors ({n_params / 1e6:.1f}M values); '
          f'saved to {out}')
    print(f'Use it with:  segmenter: {{type: segformer, model: {out}}}')
    return 0


if __name__ == '__main__':
    try:
        sys.exit(main())
    except UserError as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
