"""The training loop: options in, experiment folder out.

Read top to bottom: set-up (device, seed, folders, resume state), data, model, then the iteration loop
(feed -> step -> NaN check -> log -> checkpoint -> validate). Everything the loop calls is a small,
separately tested part.
"""
from __future__ import annotations

import logging
import math
import os
import random
import shutil
import time

import numpy as np
import torch
from tqdm import tqdm

from desra.config import dump_yaml
from desra.data.build import build_dataset, build_eval_loader, build_train_loader
from desra.engine import dist as dist_utils
from desra.archs.checkpoint_io import read_checkpoint
from desra.engine.checkpoint import atomic_torch_save, capture_rng_state, find_latest_state, restore_rng_state
from desra.engine.logger import LossRecord, MessageLogger, get_root_logger, init_tb_logger
from desra.engine.validation import validate
from desra.errors import TrainingDivergedError
from desra.models import build_model
from desra.registry import import_user_modules

logger = logging.getLogger('desra')


def set_random_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def _prepare_experiment_folders(opt: dict, resuming: bool) -> None:
    path = opt['path']
    root = path['experiments_root']
    if not resuming and os.path.isdir(root) and os.listdir(root):
        # BasicSR keeps an earlier run with the same name instead of mixing files into it
        archived = f"{root}_archived_{time.strftime('%Y%m%d_%H%M%S')}"
        shutil.move(root, archived)
        print(f'Existing experiment folder moved to {archived}')
    for key in ('experiments_root', 'models', 'training_states', 'visualization'):
        os.makedirs(path[key], exist_ok=True)


def resolve_resume_state(opt: dict) -> str | None:
    """``path.resume_state`` if given; with ``--auto_resume`` the latest ``training_states/<iter>.state``."""
    if opt['path'].get('resume_state'):
        return opt['path']['resume_state']
    if opt.get('auto_resume'):
        return find_latest_state(opt['path']['training_states'])
    return None


def train_pipeline(opt: dict) -> dict:
    """Train as the options say; returns ``{'iter', 'epoch', 'experiments_root'}``."""
    rank, world_size = opt['rank'], opt['world_size']
    import_user_modules(opt.get('import_modules'))
    device = dist_utils.get_device(opt.get('num_gpu', 'auto'))
    train_opt = opt['train']

    resume_path = resolve_resume_state(opt)
    resume_state = read_checkpoint(resume_path) if resume_path else None
    if rank == 0:
        _prepare_experiment_folders(opt, resuming=resume_state is not None)
    dist_utils.barrier()

    log_file = os.path.join(opt['path']['log'], f"train_{opt['name']}_{time.strftime('%Y%m%d_%H%M%S')}.log")
    get_root_logger(log_file, rank)
    if rank == 0:
        logger.info('Options:\n%s', dump_yaml({k: v for k, v in opt.items() if k != 'path'}))
    logger.info('Device: %s, world size %d, seed %d', device, world_size, opt['manual_seed'])

    seed = opt['manual_seed']
    if opt.get('deterministic', False):
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False

    # ---- data
    train_set_opt = opt['datasets']['train']
    train_set = build_dataset(train_set_opt, 'datasets.train')
    train_loader, sampler = build_train_loader(train_set, train_set_opt, 'datasets.train', world_size=world_size,
                                               rank=rank, seed=seed, pin_memory=device.type == 'cuda')
    batches_per_epoch = len(sampler) // train_set_opt['batch_size_per_gpu']
    val_loaders = []
    for key, ds_opt in opt['datasets'].items():
        if key.startswith('val'):
            val_loaders.append(build_eval_loader(build_dataset(ds_opt, f'datasets.{key}'), ds_opt))
    total_iter = int(train_opt['total_iter'])
    logger.info('Training set: %d images, %d iterations per epoch (batch %d x %d processes), %d epochs for %d '
                'iterations', len(train_set), batches_per_epoch, train_set_opt['batch_size_per_gpu'], world_size,
                math.ceil(total_iter / batches_per_epoch), total_iter)

    # ---- model
    if resume_state is not None:  # the experiment folder holds the weights; pretrained files are not needed
        opt['path']['pretrain_network_g'] = opt['path']['pretrain_network_d'] = None
    set_random_seed(seed)  # identical initial weights (and EMA copies) on every rank
    model = build_model(opt, device)
    set_random_seed(seed + rank)  # then per-rank streams, as in BasicSR
    start_iter, epoch, iter_in_epoch = 0, 0, 0
    if resume_state is not None:
        start_iter = int(resume_state['iter'])
        epoch, iter_in_epoch = int(resume_state['epoch']), int(resume_state.get('iter_in_epoch', 0))
        model.load_networks(opt['path']['models'], start_iter)
        model.load_training_state(resume_state)
        rng = resume_state.get('rng_states') or []
        if len(rng) == world_size:
            restore_rng_state(rng[rank])
        logger.info('Resumed from %s: epoch %d, iteration %d', resume_path, epoch, start_iter)
    model.wrap_distributed()

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
    progress = tqdm(total=total_iter, initial=start_iter, desc=opt['name'], unit='it', dynamic_ncols=True,
                    disable=rank != 0 or None, leave=False)
    iter_timer = data_timer = time.time()
    while current_iter < total_iter:
        sampler.set_epoch(epoch, start=iter_in_epoch * train_set_opt['batch_size_per_gpu'])
        for batch in train_loader:
            data_time = time.time() - data_timer
            current_iter += 1
            iter_in_epoch += 1
            model.update_learning_rate(current_iter)
            model.feed_data(batch)
            losses = model.optimize_parameters(current_iter)
            loss_values = _reduce_and_check(losses, current_iter)
            progress.update(1)

            if current_iter % print_freq == 0:
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
    """Networks first, then ``<iter>.state`` (atomically), so a state file always has its networks."""
    if iter_in_epoch >= batches_per_epoch:
        epoch, iter_in_epoch = epoch + 1, 0
    rng_states = dist_utils.all_gather_object(capture_rng_state())
    if opt['rank'] == 0:
        model.save_networks(opt['path']['models'], current_iter)
        state = {'iter': current_iter, 'epoch': epoch, 'iter_in_epoch': iter_in_epoch,
                 'rng_states': rng_states, **model.training_state()}
        atomic_torch_save(state, os.path.join(opt['path']['training_states'], f'{current_iter}.state'))
        logger.info('Saved models and training state at iteration %d.', current_iter)
    dist_utils.barrier()
