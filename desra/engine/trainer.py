"""The training loop: options in, experiment folder out.

Read top to bottom:

1. set-up that only reads: device, seed, the training state to resume from (verified, see
   :mod:`desra.engine.resume`), data sets and loaders, the model with its pretrained weights, the validation
   metrics. Anything wrong in the options or the files stops here, before the experiment folder is touched;
2. the experiment folder: locked for this run (a second run with the same name refuses), temporary files of
   killed writes removed, an earlier run's files moved to ``<name>_archived_<time>`` (BasicSR's behaviour)
   unless resuming, the log file, a copy of the option file;
3. the iteration loop (feed -> step -> NaN check -> log -> checkpoint -> validate). The first and the last
   iteration are always logged, whatever ``logger.print_freq``.
"""
from __future__ import annotations

import logging
import math
import os
import random
import shutil
import sys
import time

import numpy as np
import torch

from desra.atomic import atomic_write_bytes, remove_stale_temp_files
from desra.config import dump_yaml
from desra.data.build import build_dataset, build_eval_loader, build_train_loader
from desra.engine import dist as dist_utils
from desra.engine.checkpoint import atomic_torch_save, capture_rng_state, restore_rng_state
from desra.engine.logger import LossRecord, MessageLogger, detach_log_file, get_root_logger, init_tb_logger
from desra.engine.resume import find_resume_state, verify_training_state
from desra.engine.validation import check_metric_options, validate
from desra.errors import CheckpointError, ConfigError, TrainingDivergedError
from desra.models import build_model
from desra.registry import import_user_modules
from desra.utils.lock import LOCK_NAME, FolderLock
from desra.utils.progress import Progress

logger = logging.getLogger('desra')


def set_random_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def archive_experiment(root: str) -> str | None:
    """Move every entry of ``root`` but its lock file into ``<root>_archived_<time>``; returns that folder.

    The folder itself stays (and stays locked), so no other run can take the name in between.
    """
    entries = [e for e in os.listdir(root) if e != LOCK_NAME]
    if not entries:
        return None
    archived = f"{root}_archived_{time.strftime('%Y%m%d_%H%M%S')}"
    k = 1
    while os.path.exists(archived):
        archived = f"{root}_archived_{time.strftime('%Y%m%d_%H%M%S')}_{k}"
        k += 1
    os.makedirs(archived)
    for e in entries:
        shutil.move(os.path.join(root, e), os.path.join(archived, e))
    return archived


def _prepare_experiment_folders(opt: dict, lock: FolderLock, resuming: bool) -> None:
    path = opt['path']
    root = path['experiments_root']
    lock.acquire()
    removed = remove_stale_temp_files(root)
    if removed:
        logger.info('Removed %d temporary file(s) left by interrupted writes in %s', len(removed), root)
    if not resuming:
        archived = archive_experiment(root)
        if archived:
            logger.info('Earlier files of experiment %s moved to %s', opt['name'], archived)
    for key in ('experiments_root', 'models', 'training_states', 'visualization'):
        os.makedirs(path[key], exist_ok=True)


def _copy_option_file(opt: dict) -> None:
    """BasicSR keeps the option file beside the run, headed by the command that started it."""
    src = opt.get('opt_path')
    if not src or not os.path.isfile(src):
        return
    with open(src, 'rb') as f:
        text = f.read()
    head = f"# GENERATE TIME: {time.asctime()}\n# CMD:\n# {' '.join(sys.argv)}\n\n".encode('utf-8', 'backslashreplace')
    atomic_write_bytes(os.path.join(opt['path']['experiments_root'], os.path.basename(src)), head + text)


def check_data_for_model(model, train_set, opt: dict) -> None:
    """The on-the-fly degradation needs GT images with kernels, and paired data sets need none."""
    kernels = getattr(train_set, 'provides_kernels', False)
    kind = type(train_set).__name__
    masks = getattr(train_set, 'provides_masks', False)
    if getattr(model, 'needs_masks', False) != masks:
        if masks:
            raise ConfigError(f"datasets.train.type: {kind} gives images with artifact masks, which model_type "
                              f"{opt.get('model_type')} does not learn from; use model_type: LocalizerModel")
        raise ConfigError(f"model_type {opt.get('model_type')} learns artifact masks: datasets.train.type must be "
                          f"ArtifactMaskDataset, got {kind}")
    if getattr(model, 'synthesis', None) is not None:
        if not kernels:
            raise ConfigError(f"high_order_degradation: true needs GT images with blur kernels (datasets.train.type: "
                              f"RealESRGANDataset), got {kind}; for paired data set high_order_degradation: false")
        pad = getattr(train_set, 'crop_pad_size', None)
        if pad is not None and (pad % opt['scale'] or model.synthesis.gt_size > pad):
            raise ConfigError(f"gt_size: {model.synthesis.gt_size} must be at most datasets.train.crop_pad_size {pad}, "
                              f"which must be a multiple of scale {opt['scale']}")
    elif kernels:
        raise ConfigError(f"datasets.train.type: {kind} gives GT images and kernels for the on-the-fly degradation, "
                          f"but model_type {opt.get('model_type')} does not degrade; set high_order_degradation: true "
                          f"or use RealESRGANModel / RealESRNetModel")


def resolve_resume_state(opt: dict) -> tuple[str | None, dict | None]:
    """``path.resume_state`` if given (verified, no fallback); with ``--auto_resume`` the newest intact state.

    Skipped states are logged with the reason; a replaced network file is an error (:mod:`desra.engine.resume`).
    """
    models_dir = opt['path']['models']
    explicit = opt['path'].get('resume_state')
    if explicit:
        state, why = verify_training_state(explicit, os.path.join(os.path.dirname(os.path.dirname(
            os.path.abspath(explicit))), 'models'))
        if state is None:
            raise CheckpointError(f"path.resume_state: {why}")
        return explicit, state
    if opt.get('auto_resume'):
        path, state, skipped = find_resume_state(opt['path']['training_states'], models_dir)
        for why in skipped:
            logger.warning('--auto_resume: skipped a damaged training state: %s', why)
        return path, state
    return None, None


def train_pipeline(opt: dict) -> dict:
    """Train as the options say; returns ``{'iter', 'epoch', 'experiments_root'}``."""
    rank, world_size = opt['rank'], opt['world_size']
    get_root_logger(None, rank)  # console now; the log file once the folder is ready
    import_user_modules(opt.get('import_modules'))
    device = dist_utils.get_device(opt.get('num_gpu', 'auto'))
    train_opt = opt['train']
    exp_root = opt['path']['experiments_root']
    lock = FolderLock(exp_root, 'experiment folder')
    if rank == 0:
        lock.check()  # refuse at once when another run holds the folder, before minutes of set-up

    # ---- 1. everything that can fail on user input; nothing is written yet
    resume_path, resume_state = resolve_resume_state(opt)
    seed = opt['manual_seed']
    if opt.get('deterministic', False):
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    train_set_opt = opt['datasets']['train']
    train_set = build_dataset(train_set_opt, 'datasets.train')
    train_loader, sampler = build_train_loader(train_set, train_set_opt, 'datasets.train', world_size=world_size,
                                               rank=rank, seed=seed, pin_memory=device.type == 'cuda')
    batches_per_epoch = len(sampler) // train_set_opt['batch_size_per_gpu']
    val_loaders = []
    for key, ds_opt in opt['datasets'].items():
        if key.startswith('val'):
            val_loaders.append(build_eval_loader(build_dataset(ds_opt, f'datasets.{key}'), ds_opt))
    val_opt = opt.get('val') or {}
    check_metric_options(val_opt.get('metrics') or {}, 'val.metrics')
    total_iter = int(train_opt['total_iter'])

    if resume_state is not None:  # the experiment folder holds the weights; pretrained files are not needed
        opt['path']['pretrain_network_g'] = opt['path']['pretrain_network_d'] = None
    set_random_seed(seed)  # identical initial weights (and EMA copies) on every rank
    model = build_model(opt, device)
    if model.speed is not None:  # the speed options used, into the option dump
        from desra.engine.speed import apply_backend_flags

        apply_backend_flags(model.speed, device)
        train_opt.update(model.speed)
    check_data_for_model(model, train_set, opt)
    set_random_seed(seed + rank)  # then per-rank streams, as in BasicSR
    start_iter, epoch, iter_in_epoch = 0, 0, 0
    if resume_state is not None:
        start_iter = int(resume_state['iter'])
        epoch, iter_in_epoch = int(resume_state['epoch']), int(resume_state.get('iter_in_epoch', 0))
        model.load_networks(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(resume_path))), 'models'),
                            start_iter)
        model.load_training_state(resume_state)
        rng = resume_state.get('rng_states') or []
        if len(rng) == world_size:
            restore_rng_state(rng[rank])
        rank_states = resume_state.get('rank_states') or []
        if len(rank_states) == world_size:
            model.load_rank_state(rank_states[rank])
        elif rank_states:
            logger.warning('The training state was saved by %d processes, this run has %d: the per-process '
                           'training-pair pools start empty', len(rank_states), world_size)

    # ---- 2. the experiment folder (rank 0), then every rank logs
    dist_utils.call_on_rank0(lambda: _prepare_experiment_folders(opt, lock, resuming=resume_state is not None))
    log_file = os.path.join(opt['path']['log'], f"train_{opt['name']}_{time.strftime('%Y%m%d_%H%M%S')}.log")
    try:
        return _train_loop(opt, model, train_loader, sampler, val_loaders, device, start_iter, epoch, iter_in_epoch,
                           batches_per_epoch, total_iter, resume_path, len(train_set), log_file)
    finally:
        detach_log_file(log_file)
        lock.release()


def _train_loop(opt, model, train_loader, sampler, val_loaders, device, start_iter, epoch, iter_in_epoch,
                batches_per_epoch, total_iter, resume_path, n_images, log_file) -> dict:
    rank, world_size = opt['rank'], opt['world_size']
    train_set_opt = opt['datasets']['train']
    if rank == 0:
        get_root_logger(log_file, rank)
        _copy_option_file(opt)
        # the full option dump goes to the log file only; the console gets a one-line summary
        file_only = logging.getLogger('desra.options')
        file_only.propagate = False
        file_only.handlers = [h for h in logger.handlers if isinstance(h, logging.FileHandler)
                              and h.baseFilename == os.path.abspath(log_file)]
        file_only.setLevel(logging.INFO)
        file_only.info('Options:\n%s', dump_yaml({k: v for k, v in opt.items() if k != 'path'}))
    dist_utils.barrier()
    logger.info('Experiment %s: %s, model %s, device %s, world size %d, seed %d', opt['name'],
                opt['path']['experiments_root'], opt.get('model_type'), device, world_size, opt['manual_seed'])
    logger.info('Training set: %d images, %d iterations per epoch (batch %d x %d processes), %d epochs for %d '
                'iterations', n_images, batches_per_epoch, train_set_opt['batch_size_per_gpu'], world_size,
                math.ceil(total_iter / batches_per_epoch), total_iter)
    if resume_path:
        logger.info('Resumed from %s: epoch %d, iteration %d', resume_path, epoch, start_iter)
    model.wrap_distributed()
    model.compile_networks()

    # ---- loggers (rank 0 writes)
    tb_logger = None
    loss_record = None
    if rank == 0:
        if (opt.get('logger') or {}).get('use_tb_logger', True) and 'debug' not in opt['name']:
            tb_logger = init_tb_logger(opt['path']['tb_logger'])
        loss_record = LossRecord(os.path.join(opt['path']['experiments_root'], 'losses.jsonl'))
    log_opt = opt.get('logger') or {}
    print_freq = int(log_opt.get('print_freq', 100))
    save_iters = set(log_opt.get('save_checkpoint_iters') or [])  # extra milestones, e.g. [1000, 2000, 5000]
    save_freq = int(log_opt.get('save_checkpoint_freq', 0 if save_iters else 5000))
    val_opt = opt.get('val') or {}
    val_freq = int(val_opt.get('val_freq', 0)) if val_loaders else 0
    msg_logger = MessageLogger(opt, start_iter, tb_logger)

    # ---- loop
    current_iter = start_iter
    if current_iter >= total_iter:
        logger.info('Training already reached iteration %d of %d: nothing to do.', current_iter, total_iter)
    progress = Progress(total_iter, opt['name'], unit='it', enabled=rank == 0, initial=start_iter)
    iter_timer = data_timer = time.time()
    while current_iter < total_iter:
        sampler.set_epoch(epoch, start=iter_in_epoch * train_set_opt['batch_size_per_gpu'])
        for batch in train_loader:
            data_time = time.time() - data_timer
            current_iter += 1
            iter_in_epoch += 1
            model.update_learning_rate(current_iter)
            model.current_iter = current_iter  # seeds the on-the-fly degradation's draws of this iteration
            model.feed_data(batch)
            losses = model.optimize_parameters(current_iter)
            loss_values = _reduce_and_check(losses, current_iter)
            progress.update(1)

            if current_iter % print_freq == 0 or current_iter == start_iter + 1 or current_iter == total_iter:
                if loss_record is not None:
                    loss_record.write(current_iter, loss_values)
                msg_logger({'epoch': epoch, 'iter': current_iter, 'lrs': model.get_current_learning_rate(),
                            'time': time.time() - iter_timer, 'data_time': data_time, **loss_values})
            if (save_freq and current_iter % save_freq == 0) or current_iter in save_iters \
                    or current_iter == total_iter:
                save_training_state(model, opt, current_iter, epoch, iter_in_epoch, batches_per_epoch)
            if val_freq and current_iter % val_freq == 0:
                for loader in val_loaders:
                    validate(model, loader, opt, current_iter, tb_logger, save_img=val_opt.get('save_img', False))
            iter_timer = data_timer = time.time()
            if current_iter >= total_iter:
                break
        else:
            epoch, iter_in_epoch = epoch + 1, 0
            continue
        if iter_in_epoch >= batches_per_epoch:
            epoch, iter_in_epoch = epoch + 1, 0
    progress.close()
    if tb_logger is not None:
        tb_logger.close()
    logger.info('End of training at iteration %d.', current_iter)
    return {'iter': current_iter, 'epoch': epoch, 'experiments_root': opt['path']['experiments_root']}


def _reduce_and_check(losses: dict, current_iter: int) -> dict:
    """Average the loss terms over ranks (one all-reduce, one host sync) and stop on NaN/Inf."""
    if not losses:
        return {}
    names = list(losses)
    stacked = dist_utils.all_reduce_mean(torch.stack([losses[n].float().reshape(()) for n in names]))
    values = stacked.tolist()
    bad = [n for n, v in zip(names, values) if not math.isfinite(v)]
    if bad:
        raise TrainingDivergedError(
            f"non-finite loss at iteration {current_iter}: {', '.join(f'{n}={losses[n].item()}' for n in bad)}. "
            "Training stopped; the last saved checkpoint is untouched. Lower the learning rate or the loss "
            "weights, or check the data.")
    return dict(zip(names, values))


def save_training_state(model, opt: dict, current_iter: int, epoch: int, iter_in_epoch: int,
                        batches_per_epoch: int) -> None:
    """Networks first, then ``<iter>.state`` (atomically) recording their sizes and SHA-256, so a state file
    always has its networks and a resume can check them."""
    if iter_in_epoch >= batches_per_epoch:
        epoch, iter_in_epoch = epoch + 1, 0
    rng_states = dist_utils.all_gather_object(capture_rng_state())
    rank_states = dist_utils.all_gather_object(model.rank_state())

    def save():
        files = model.save_networks(opt['path']['models'], current_iter)
        state = {'iter': current_iter, 'epoch': epoch, 'iter_in_epoch': iter_in_epoch, 'files': files,
                 'rng_states': rng_states, **model.training_state()}
        if any(rank_states):
            state['rank_states'] = rank_states
        atomic_torch_save(state, os.path.join(opt['path']['training_states'], f'{current_iter}.state'))
        logger.info('Saved models and training state at iteration %d.', current_iter)

    dist_utils.call_on_rank0(save)  # a full disk stops every rank with the same one-line message
