"""Where pretrained files are looked for, and the names of the files the metrics need.

Every pretrained file is found the same way (:func:`find_weight_file`), first match wins:

1. an environment variable naming the file (``DESRA_VGG19_WEIGHTS``, ``DESRA_ALEXNET_WEIGHTS``, ...); when it is
   set but points nowhere, that is an error, not a reason to look elsewhere;
2. ``<cwd>/pretrained/<file>``, then ``<repo root>/pretrained/<file>``;
3. ``<cwd or repo root>/experiments/pretrained_models/<file>`` (BasicSR's place);
4. torch hub's cache, ``$TORCH_HOME/hub/checkpoints/<file>`` (default ``~/.cache/torch/...``), for the
   files torchvision / pytorch-fid download there.

Nothing is ever downloaded here, and a missing file is never replaced by random weights.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from desra.errors import CheckpointError

#: Parent of the ``desra`` package; a module attribute so that tests can point it elsewhere.
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class PretrainedFile:
    """A pretrained file a component needs: its name, environment variable and how to get it."""
    filename: str
    env: str
    what: str                 # e.g. "torchvision's AlexNet ImageNet weights"
    how: str                  # e.g. "python scripts/download_pretrained.py --source official --only alexnet"
    hub_cache: bool = True    # also look in torch hub's checkpoint cache


ALEXNET = PretrainedFile('alexnet-owt-7be5be79.pth', 'DESRA_ALEXNET_WEIGHTS', "torchvision's AlexNet ImageNet weights",
                         'python scripts/download_pretrained.py --source official --only alexnet')
VGG16 = PretrainedFile('vgg16-397923af.pth', 'DESRA_VGG16_WEIGHTS', "torchvision's VGG16 ImageNet weights",
                       'python scripts/download_pretrained.py --source official --only vgg16')
FID_INCEPTION = PretrainedFile('pt_inception-2015-12-05-6726825d.pth', 'DESRA_FID_INCEPTION_WEIGHTS',
                               "pytorch-fid's InceptionV3 weights (the TF FID network)",
                               'python scripts/download_pretrained.py --source official --only fid_inception')
LPIPS_HEADS = {
    net: PretrainedFile(f'lpips_{net}_v0.1.safetensors', f'DESRA_LPIPS_{net.upper()}_HEADS',
                        f'the LPIPS v0.1 linear heads for {net} (from the lpips 0.1.4 wheel)',
                        f'python scripts/download_pretrained.py --source pypi --only lpips_{net}', hub_cache=False)
    for net in ('alex', 'vgg')
}
DISTS_WEIGHTS = PretrainedFile('dists_alpha_beta.safetensors', 'DESRA_DISTS_WEIGHTS',
                               "DISTS's alpha/beta weights (from the DISTS_pytorch 0.1 wheel)",
                               'python scripts/download_pretrained.py --source pypi --only dists', hub_cache=False)
NIQE_PARAMS = PretrainedFile('niqe_pris_params.npz', 'DESRA_NIQE_PARAMS',
                             "BasicSR's MATLAB-derived NIQE pristine parameters (from the basicsr 1.4.2 sdist)",
                             'python scripts/download_pretrained.py --source pypi --only niqe', hub_cache=False)


def weight_candidates(spec: PretrainedFile, repo_root: Path | None = None) -> list[tuple[str, Path | None]]:
    """The places searched for ``spec``, in order, as ``(description, path)``; ``path`` is None for an unset
    environment variable."""
    import torch

    repo_root = REPO_ROOT if repo_root is None else Path(repo_root)
    env_val = os.environ.get(spec.env)
    cands: list[tuple[str, Path | None]] = [(f'${spec.env}', Path(env_val).expanduser() if env_val else None)]
    cwd = Path.cwd()
    for root in (cwd, repo_root):
        cands.append(('pretrained/', root / 'pretrained' / spec.filename))
    for root in (cwd, repo_root):
        cands.append(('BasicSR folder', root / 'experiments' / 'pretrained_models' / spec.filename))
    if spec.hub_cache:
        cands.append(('torch hub cache', Path(torch.hub.get_dir()) / 'checkpoints' / spec.filename))
    seen, out = set(), []
    for desc, p in cands:
        key = None if p is None else str(p.resolve() if p.is_absolute() else p)
        if key is not None and key in seen:
            continue
        seen.add(key)
        out.append((desc, p))
    return out


def find_weight_file(spec: PretrainedFile, needed_by: str, repo_root: Path | None = None,
                     required: bool = True) -> Path | None:
    """The first existing file among :func:`weight_candidates`.

    A missing file raises a one-line :class:`CheckpointError` naming the file, the folder to put it in, the
    environment variable and the command that fetches it (or returns None when ``required`` is False).
    """
    cands = weight_candidates(spec, repo_root)
    env_desc, env_path = cands[0]
    if env_path is not None:
        if not env_path.is_file():
            raise CheckpointError(f'{spec.env}={env_path}: file not found (expected {spec.what}, {spec.filename})')
        return env_path
    for _, p in cands[1:]:
        if p is not None and p.is_file():
            return p
    if not required:
        return None
    repo_root = REPO_ROOT if repo_root is None else Path(repo_root)
    searched = ', '.join(str(p) for _, p in cands[1:])
    raise CheckpointError(
        f'{needed_by} needs {spec.filename} ({spec.what}): put it in {repo_root / "pretrained"}/ '
        f'(or set {spec.env}=/path/to/{spec.filename}), e.g. with `{spec.how}`; searched {searched}')


def load_backbone_weights(net, weights, spec: PretrainedFile, needed_by: str, prefix: str = '',
                          repo_root: Path | None = None) -> Path | None:
    """Load a frozen backbone's parameters and buffers from a torchvision-layout file.

    Args:
        net: the module; its own state-dict keys, each prefixed with ``prefix`` (e.g. ``'features.'``), must
            all be in the file with the same shapes. Other keys of the file (``classifier.*``, ``fc.*`` ...) are
            ignored; BatchNorm's ``num_batches_tracked`` may be absent (old files lack it).
        weights: None (search with :func:`find_weight_file`), a path (``.pth`` read with ``weights_only``
            on CPU, or ``.safetensors``), a state dict, or ``'random'`` (keep the initialisation; tests only).
        spec, needed_by: what the file is and who needs it, for the messages.

    Returns:
        The path read (None for a state dict or ``'random'``). A file that is not such a state dict raises a
        one-line :class:`CheckpointError` listing the missing (and, on shape mismatch, the differing) keys.
    """
    from collections.abc import Mapping

    from desra.archs.vgg_arch import load_vgg_state_dict

    if isinstance(weights, str) and weights == 'random':
        return None
    path = None
    if isinstance(weights, Mapping):
        sd, source = dict(weights), '<state dict>'
    else:
        path = find_weight_file(spec, needed_by, repo_root) if weights is None else Path(weights).expanduser()
        sd, source = load_vgg_state_dict(path), str(path)
    own = net.state_dict()
    wanted = {k: prefix + k for k in own}
    missing = [f for k, f in wanted.items() if f not in sd and not k.endswith('num_batches_tracked')]
    if missing:
        shown = ', '.join(missing[:8]) + (f', ... ({len(missing) - 8} more)' if len(missing) > 8 else '')
        raise CheckpointError(f'{source}: not {spec.what} ({spec.filename}): {len(missing)} key(s) missing: '
                              f'{shown}')
    bad = [f'{f} {tuple(sd[f].shape)} (expected {tuple(v.shape)})' for k, v in own.items()
           if (f := wanted[k]) in sd and tuple(sd[f].shape) != tuple(v.shape)]
    if bad:
        raise CheckpointError(f'{source}: not {spec.what} ({spec.filename}): wrong shapes: {", ".join(bad[:8])}')
    net.load_state_dict({k: sd[wanted[k]] if wanted[k] in sd else v for k, v in own.items()}, strict=True)
    return path
