"""Machinery shared by the SR and GAN models: networks, devices, DDP, AMP, optimisers, checkpoints.

A model owns its networks and optimisers and knows one training step (``optimize_parameters``). The loop,
logging, validation and checkpoint timing live in :mod:`desra.engine.trainer`.
"""
from __future__ import annotations

import contextlib
import logging
import os
from collections import OrderedDict

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from desra.engine.checkpoint import atomic_torch_save
from desra.engine.lr_scheduler import LRSchedule
from desra.errors import ConfigError
from desra.registry import ARCH_REGISTRY, LOSS_REGISTRY

logger = logging.getLogger('desra')

_OPTIMIZERS = {name: getattr(torch.optim, name) for name in
               ('Adam', 'AdamW', 'SGD', 'RMSprop', 'Adamax', 'NAdam', 'RAdam', 'Adagrad')}


def build_network(net_opt: dict, key_path: str) -> nn.Module:
    import desra.archs  # noqa: F401  (registers the built-in architectures)

    return ARCH_REGISTRY.build(dict(net_opt), key_path)


def build_loss(loss_opt: dict, key_path: str) -> nn.Module:
    import desra.losses  # noqa: F401  (registers the built-in losses)

    return LOSS_REGISTRY.build(dict(loss_opt), key_path)


def build_optimizer(params, optim_opt: dict, key_path: str, speed: dict | None = None) -> torch.optim.Optimizer:
    """The ``optim_*`` block's optimiser; with ``speed`` (:func:`desra.engine.speed.resolve_speed_options`) its
    fused / foreach implementation where the block does not choose one."""
    optim_opt = dict(optim_opt)
    params = list(params)
    name = optim_opt.pop('type')
    if name not in _OPTIMIZERS:
        import difflib
        close = difflib.get_close_matches(name, list(_OPTIMIZERS), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ''
        raise ConfigError(f"{key_path}.type: unknown optimizer '{name}'.{hint} Available: {', '.join(_OPTIMIZERS)}")
    if 'betas' in optim_opt:
        optim_opt['betas'] = tuple(optim_opt['betas'])
    import inspect

    from desra.config import unknown_key_error

    accepted = [p for p in inspect.signature(_OPTIMIZERS[name]).parameters if p not in ('self', 'params')]
    for key in optim_opt:
        if key not in accepted:
            raise unknown_key_error(key_path, key, accepted)
    from desra.engine.speed import optimizer_speed_kwargs

    extra = optimizer_speed_kwargs(name, optim_opt, speed, params)
    try:
        return _OPTIMIZERS[name](params, **optim_opt, **extra)
    except TypeError as e:
        raise ConfigError(f"{key_path}: bad options for {name}: {e}") from None


def unwrap(net: nn.Module) -> nn.Module:
    return net.module if isinstance(net, DistributedDataParallel) else net


def network_scale(net: nn.Module) -> int | None:
    """The upscaling factor a generator declares (``scale``, ``upscale`` or ``upscaling_factor``), if any."""
    for attr in ('scale', 'upscale', 'upscaling_factor'):
        value = getattr(unwrap(net), attr, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def check_network_scale(net: nn.Module, scale: int, key_path: str = 'network_g') -> None:
    """ConfigError when the generator upscales by another factor than the options' ``scale``."""
    own = network_scale(net)
    if own is not None and own != scale:
        raise ConfigError(f"scale: {scale}, but {key_path} ({type(unwrap(net)).__name__}) upscales x{own}; set "
                          f"scale and the generator's scale/upscale option to the same factor")


def load_pretrained(net: nn.Module, path: str, param_key: str, strict: bool, key_path: str) -> None:
    from desra.archs.checkpoint_io import load_network_weights

    load_network_weights(unwrap(net), path, param_key=param_key, strict=strict, key_path=key_path)
    logger.info('Loaded %s from %s [%s]', key_path, path, param_key)


class BaseModel:
    """Networks on ``device``; optional DDP wrapping, AMP, EMA; BasicSR checkpoint formats.

    Subclasses define ``_init_training()`` (losses and optimisers) and ``optimize_parameters(t)``.

    Two parts a model may be given by its options, whatever its class:

    * ``high_order_degradation: true``: a :class:`~desra.data.degradations.pipeline.SyntheticPairs` that turns the
      data set's GT images and kernels into (LQ, GT) pairs in ``feed_data`` (Real-ESRGAN's on-the-fly
      degradation and training-pair pool). ``degrade_by_default`` is the value when the key is absent (true for
      Real-ESRGAN's model names); ``degradation_source`` says what is degraded (``'usm'``: the USM-sharpened GT,
      as Real-ESRGAN's GAN models; ``'gt'``: the GT, USM-sharpened first with ``gt_usm: true``, as RealESRNet).
    * ``l1_gt_usm`` / ``percep_gt_usm`` / ``gan_gt_usm``: the pixel loss, the perceptual loss and the
      discriminator's real input use the USM-sharpened GT (Real-ESRGAN: true, true, false). The LDL artifact map
      always uses the plain GT, as LDL and BasicSR do.
    """

    degrade_by_default = False
    degradation_source = 'gt'

    def __init__(self, opt: dict, device: torch.device):
        self.opt = opt
        self.device = device
        self.is_train = opt.get('is_train', True)
        train_opt = opt.get('train') or {}
        self.optimizers: list[torch.optim.Optimizer] = []
        self.schedules: list[LRSchedule] = []
        self.scalers: list[torch.amp.GradScaler] = []
        self.log_dict: OrderedDict = OrderedDict()
        self.speed = None
        if self.is_train:
            from desra.engine.speed import resolve_speed_options

            self.speed = resolve_speed_options(train_opt, device, bool(opt.get('deterministic', False)))
            if self.speed['compile']:
                from desra.engine.speed import compile_unavailable_reason

                reason = compile_unavailable_reason(self.speed['compile'], device)
                if reason is not None:
                    logger.warning('train.compile: torch.compile is unavailable here (%s); training without it',
                                   reason)
                    self.speed['compile'] = None

        self.net_g = self._prepare_network(build_network(opt['network_g'], 'network_g').to(device))
        if 'scale' in opt:
            check_network_scale(self.net_g, opt['scale'], 'network_g')
        path = opt.get('path') or {}
        if path.get('pretrain_network_g'):
            load_pretrained(self.net_g, path['pretrain_network_g'], path.get('param_key_g', 'params'),
                            path.get('strict_load_g', True), 'path.pretrain_network_g')

        self.ema = None
        if self.is_train and train_opt.get('ema_decay', 0) > 0:
            from desra.models.ema import ModelEMA

            self.ema = ModelEMA(self.net_g, train_opt['ema_decay'])
            if path.get('pretrain_network_g'):
                # BasicSR: an official checkpoint's params_ema seeds the EMA; otherwise it starts as G
                from desra.archs.checkpoint_io import read_checkpoint

                if 'params_ema' in read_checkpoint(path['pretrain_network_g']):
                    load_pretrained(self.ema.module, path['pretrain_network_g'], 'params_ema',
                                    path.get('strict_load_g', True), 'path.pretrain_network_g')

        self.amp_dtype = None
        if train_opt.get('use_amp', False):
            dtype = {'bf16': torch.bfloat16, 'bfloat16': torch.bfloat16, 'fp16': torch.float16,
                     'float16': torch.float16}.get(train_opt.get('amp_dtype', 'bf16'))
            if dtype is None:
                raise ConfigError(f"train.amp_dtype: expected bf16 or fp16, got '{train_opt.get('amp_dtype')}'")
            if device.type != 'cuda':
                logger.warning('train.use_amp is ignored on %s: autocast is only used on CUDA', device.type)
            else:
                self.amp_dtype = dtype

        self.synthesis = None
        if self.is_train and opt.get('high_order_degradation', self.degrade_by_default):
            from desra.data.degradations.pipeline import SyntheticPairs

            self.synthesis = SyntheticPairs(opt, device, source=self.degradation_source,
                                            sharpen_gt=bool(opt.get('gt_usm', False)))
        self.usm_for = {k: bool(opt.get(f'{k}_gt_usm', False)) for k in ('l1', 'percep', 'gan')}
        self.usm_sharpener = None
        if any(self.usm_for.values()):
            from desra.data.degradations.filtering import USMSharp

            self.usm_sharpener = USMSharp().to(device)
        self.current_iter = 0

    # ------------------------------------------------------------------------------------ training set-up
    def _prepare_network(self, net: nn.Module) -> nn.Module:
        """A trained network in the memory format ``train.channels_last`` asks for (before the EMA copy)."""
        if self.speed is not None and self.speed['channels_last']:
            from desra.engine.speed import to_channels_last

            to_channels_last(net)
        return net

    def _init_generator_optimizer(self) -> None:
        """``optimizer_g`` (``train.optim_g``) over G's trainable parameters, its grad scaler and the schedules:
        the optimisation of a model that trains G alone."""
        params = [p for p in self.net_g.parameters() if p.requires_grad]
        self.optimizer_g = build_optimizer(params, self.opt['train']['optim_g'], 'train.optim_g', self.speed)
        self.optimizers = [self.optimizer_g]
        self.scaler_g = self._make_scaler()
        self._setup_schedules()

    def compile_networks(self) -> None:
        """``torch.compile`` the trained networks and the EMA in place when ``train.compile`` says so (where
        compiling cannot work here, ``__init__`` has said why with one warning and turned it off)."""
        spec = (self.speed or {}).get('compile')
        if not spec:
            return
        from desra.engine.speed import compile_network

        nets = [unwrap(getattr(self, n)) for n in self._trained_network_names()]
        if self.ema is not None:
            nets.append(self.ema.module)
        for net in nets:
            compile_network(net, spec)
        logger.info('torch.compile: %s (mode %s, backend %s); the first iterations compile', ', '.join(
            type(n).__name__ for n in nets), spec['mode'], spec['backend'])

    def wrap_distributed(self) -> None:
        """Wrap the trained networks in DDP when a process group is active."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        ids = [self.device.index] if self.device.type == 'cuda' else None
        for name in self._trained_network_names():
            net = getattr(self, name)
            # a network that declares parameters outside its forward (e.g. DeepLabV3Plus below depth 5) needs it
            find_unused = self.opt.get('find_unused_parameters', getattr(net, 'has_unused_parameters', False))
            setattr(self, name, DistributedDataParallel(net, device_ids=ids, find_unused_parameters=find_unused))

    def _trained_network_names(self) -> list[str]:
        return ['net_g']

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _make_scaler(self):
        enabled = self.amp_dtype == torch.float16
        scaler = torch.amp.GradScaler(self.device.type, enabled=enabled)
        self.scalers.append(scaler)
        return scaler

    def _setup_schedules(self) -> None:
        sched_opt = (self.opt.get('train') or {}).get('scheduler')
        self.schedules = [LRSchedule(o, sched_opt) for o in self.optimizers]

    def update_learning_rate(self, current_iter: int) -> None:
        warmup = (self.opt.get('train') or {}).get('warmup_iter', -1)
        for s in self.schedules:
            s.update(current_iter, warmup)

    def get_current_learning_rate(self) -> list[float]:
        return [g['lr'] for g in self.optimizers[0].param_groups]

    def feed_data(self, data: dict) -> None:
        """A batch from the loader; with a synthesis part, GT + kernels become degraded (LQ, GT) pairs first.

        ``self.current_iter`` (set by the trainer) seeds the degradation's draws of this iteration.
        """
        if self.synthesis is not None and 'kernel1' in data:
            rank = torch.distributed.get_rank() if (torch.distributed.is_available()
                                                    and torch.distributed.is_initialized()) else 0
            self.lq, self.gt = self.synthesis(data, self.current_iter, rank)
        else:
            self.lq = data['lq'].to(self.device, non_blocking=True)
            self.gt = data['gt'].to(self.device, non_blocking=True) if 'gt' in data else None
        if self.speed is not None and self.speed['channels_last']:
            from desra.engine.speed import batch_to_channels_last

            self.lq, self.gt = batch_to_channels_last(self.lq), batch_to_channels_last(self.gt)
        self._set_targets()

    @torch.no_grad()
    def _set_targets(self) -> None:
        """The GT each loss compares with: USM-sharpened where ``*_gt_usm`` says so (see the class notes)."""
        self.gt_usm = self.usm_sharpener(self.gt) if self.usm_sharpener is not None and self.gt is not None else None
        self.targets = {k: (self.gt_usm if self.usm_for[k] else self.gt) for k in ('l1', 'percep', 'gan')}

    def _fidelity_losses(self, output: torch.Tensor, prefix: str) -> tuple:
        """Pixel and perceptual (+ style) terms against the GT: ``(sum, {name: term})``; names ``l_<prefix>pix`` ..."""
        terms = OrderedDict()
        targets = getattr(self, 'targets', None) or {'l1': self.gt, 'percep': self.gt}
        if getattr(self, 'cri_pix', None) is not None:
            terms[f'l_{prefix}pix'] = self.cri_pix(output, targets['l1'])
        if getattr(self, 'cri_perceptual', None) is not None:
            l_percep, l_style = self.cri_perceptual(output, targets['percep'])
            for name, value in ((f'l_{prefix}percep', l_percep), (f'l_{prefix}style', l_style)):
                if value is not None:
                    terms[name] = value
        return sum(terms.values()), terms

    def _step(self, loss: torch.Tensor, optimizer, scaler) -> None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    # ------------------------------------------------------------------------------------------ inference
    def inference_network(self) -> nn.Module:
        """The network that is validated and saved as ``params_ema``: the EMA if present, else G."""
        return self.ema.module if self.ema is not None else unwrap(self.net_g)

    @torch.no_grad()
    def infer(self, lq: torch.Tensor, tile_size: int | str = 0, tile_pad: int | None = None) -> torch.Tensor:
        from desra.inference import tiled_forward

        net = self.inference_network()
        was_training = net.training
        net.eval()
        try:
            with self.autocast():
                out = tiled_forward(net, lq.to(self.device), self.opt['scale'], tile_size=tile_size,
                                    tile_pad=tile_pad, mod_pad=getattr(net, 'mod_pad', 1))
        finally:
            net.train(was_training)
        return out.float()

    # ---------------------------------------------------------------------------------------- checkpoints
    def save_networks(self, models_dir: str, current_iter: int | str) -> dict:
        """``net_g_<iter>.pth`` = ``{'params': G, 'params_ema': EMA}``; GAN models add ``net_d_<iter>.pth``.

        Returns ``{file name: {'size', 'sha256'}}`` of the files written (recorded in the training state).
        """
        g = {'params': _cpu_state(unwrap(self.net_g))}
        if self.ema is not None:
            g['params_ema'] = _cpu_state(self.ema.module)
        name = f'net_g_{current_iter}.pth'
        return {name: atomic_torch_save(g, os.path.join(models_dir, name))}

    def load_networks(self, models_dir: str, current_iter: int) -> None:
        path = os.path.join(models_dir, f'net_g_{current_iter}.pth')
        load_pretrained(self.net_g, path, 'params', True, 'resume net_g')
        if self.ema is not None:
            load_pretrained(self.ema.module, path, 'params_ema', True, 'resume net_g_ema')

    def training_state(self) -> dict:
        return {'optimizers': [o.state_dict() for o in self.optimizers],
                'scalers': [s.state_dict() for s in self.scalers]}

    def rank_state(self) -> dict:
        """State that differs between processes (the training-pair pool); gathered from every rank when saving."""
        return {'pool': self.synthesis.pool.state_dict()} if self.synthesis is not None else {}

    def load_rank_state(self, state: dict) -> None:
        if self.synthesis is not None and state.get('pool') is not None:
            self.synthesis.pool.load_state_dict(state['pool'], self.device)

    def load_training_state(self, state: dict) -> None:
        if len(state['optimizers']) != len(self.optimizers):
            raise ConfigError(f"resume_state: the state has {len(state['optimizers'])} optimizers but this "
                              f"model has {len(self.optimizers)}; was it written by another model_type?")
        for o, s in zip(self.optimizers, state['optimizers']):
            o.load_state_dict(s)
        for sc, s in zip(self.scalers, state.get('scalers', [])):
            sc.load_state_dict(s)


def _cpu_state(net: nn.Module) -> OrderedDict:
    # contiguous: a channels-last run saves the same bytes as any other (BasicSR / torch.load readers, hashes)
    return OrderedDict((k, v.detach().cpu().clone(memory_format=torch.contiguous_format))
                       for k, v in net.state_dict().items())
