"""The artifact localiser's model: a segmentation network (``network_g``, e.g. ``DeepLabV3Plus``) trained on
artifact masks (:class:`desra.data.artifact_mask_dataset.ArtifactMaskDataset`) with BCE + soft Dice.

It is an ordinary model of the engine: ``train.py`` trains it with the usual optimisers, schedules, EMA
(``train.ema_decay``), multi-GPU (DDP) and exact resume; checkpoints are BasicSR's ``net_g_<iter>.pth`` with
``params`` / ``params_ema``. With ``train.sync_bn`` (default true) the network's BatchNorm layers use the
statistics of the global batch over all processes (:class:`desra.engine.dist.DistributedBatchNorm2d`, which also
works on CPU / gloo), so N processes with batch B / N train like one process with batch B.

Options: ``train.seg_opt`` (default ``{type: BCEDiceLoss, bce_weight: 1, dice_weight: 1}``; ``BCEWithLogitsLoss``
and ``SoftDiceLoss`` alone also work), ``train.optim_g``, ``train.scheduler``, ``train.ema_decay``. Validation
(``val``): the probability of every validation image by sliding windows (``tile``, ``overlap``), thresholded at
``threshold`` (0.5), then the detection morphology (``morphology``: ``erode``, ``dilate``, ``dilate_iterations``,
``fill_holes``, ``min_area``; default none of it, i.e. all 0, so the raw network is measured), scored with
:func:`desra.metrics.artifact_metrics.artifact_metrics` against the masks: IoU (mean over images), region
precision and recall (overlap >= 0.5). The three are logged, written to TensorBoard (``metrics/<set>/iou`` ...)
and tracked as "best" (higher is better); with ``save_img`` the probability maps are saved.
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict

import numpy as np
import torch

from desra.models.base_model import BaseModel, build_loss, unwrap
from desra.registry import MODEL_REGISTRY

logger = logging.getLogger('desra')

_MORPH_KEYS = ('erode', 'dilate', 'dilate_iterations', 'fill_holes', 'min_area')


@MODEL_REGISTRY.register()
class LocalizerModel(BaseModel):
    """Per-pixel artifact segmentation: ``logits = net_g(image)``, loss ``train.seg_opt`` against the 0/1 mask."""

    needs_masks = True

    def __init__(self, opt: dict, device: torch.device):
        super().__init__(opt, device)
        if self.is_train:
            if (opt.get('train') or {}).get('sync_bn', True):
                from desra.engine.dist import convert_batchnorm

                convert_batchnorm(self.net_g)
            self._init_training()

    def _init_training(self) -> None:
        train_opt = self.opt['train']
        self.net_g.train()
        seg_opt = train_opt.get('seg_opt') or {'type': 'BCEDiceLoss'}
        self.cri_seg = build_loss(seg_opt, 'train.seg_opt').to(self.device)
        self._init_generator_optimizer()

    def optimize_parameters(self, current_iter: int) -> OrderedDict:
        self.optimizer_g.zero_grad(set_to_none=True)
        with self.autocast():
            logits = self.net_g(self.lq)
        logits = logits.float()
        if logits.shape != self.gt.shape:
            from desra.errors import ConfigError

            raise ConfigError(f'network_g outputs {tuple(logits.shape)} for masks of shape {tuple(self.gt.shape)}; '
                              'a localiser needs classes: 1 and an output of the input size')
        terms = self.cri_seg.terms(logits, self.gt) if hasattr(self.cri_seg, 'terms') else \
            OrderedDict(l_seg=self.cri_seg(logits, self.gt))
        self._step(sum(terms.values()), self.optimizer_g, self.scaler_g)
        if self.ema is not None:
            self.ema.update(unwrap(self.net_g))
        return OrderedDict((k, v.detach()) for k, v in terms.items())

    # ----------------------------------------------------------------------------------------- validation
    @torch.no_grad()
    def validation(self, loader, opt: dict, current_iter: int, tb_logger=None, save_img: bool = False) -> dict:
        """IoU / precision / recall of the thresholded probability on ``loader`` (rank 0); see the module notes."""
        from desra.data.io import imwrite_atomic
        from desra.detection.localizer import predict_probability_tensor
        from desra.detection.morphology import clean_mask
        from desra.detection.pipeline import map_to_color
        from desra.engine import dist as dist_utils
        from desra.engine.validation import update_best
        from desra.metrics.artifact_metrics import artifact_metrics

        results: dict = {}
        if opt.get('rank', 0) == 0:
            val_opt = opt.get('val') or {}
            threshold = float(val_opt.get('threshold', 0.5))
            morph = {k: int((val_opt.get('morphology') or {}).get(k, 0)) for k in _MORPH_KEYS}
            tile, overlap = int(val_opt.get('tile', 512)), int(val_opt.get('overlap', 64))
            dataset_name = loader.dataset.opt.get('name', 'val') if hasattr(loader.dataset, 'opt') else 'val'
            net = self.inference_network()
            was_training = net.training
            net.eval()
            preds, gts = {}, {}
            try:
                for data in loader:
                    for b in range(data['lq'].shape[0]):
                        name = data['name'][b] if 'name' in data else os.path.basename(data['lq_path'][b])
                        with self.autocast():
                            prob = predict_probability_tensor(net, data['lq'][b:b + 1], tile, overlap,
                                                              device=self.device).float()
                        pred = clean_mask((prob > threshold).numpy(), **morph)
                        preds[name] = pred
                        gts[name] = data['gt'][b, 0].numpy() > 0.5
                        if save_img:
                            fname = f'{name.replace(os.sep, "_")}_{current_iter}.png'
                            imwrite_atomic(map_to_color(prob.numpy(), artifact_low=False),
                                           os.path.join(opt['path']['visualization'], dataset_name, fname))
            finally:
                net.train(was_training)
            if preds:
                m = artifact_metrics(preds, gts)
                results = {k: (float(m[k]) if m[k] is not None else float('nan'))
                           for k in ('iou', 'precision', 'recall')}
                metrics_opt = {k: {'better': 'higher'} for k in results}
                best = update_best(self.__dict__.setdefault('best_metric_results', {}), dataset_name, results,
                                   metrics_opt, current_iter)
                msg = ', '.join(f"{k}: {v:.4f} (best {best[k]['val']:.4f} @ iter {best[k]['iter']})"
                                for k, v in results.items())
                logger.info('Validation %s @ iter %d (threshold %g, %d images): %s', dataset_name, current_iter,
                            threshold, len(preds), msg)
                if tb_logger is not None:
                    for k, v in results.items():
                        tb_logger.add_scalar(f'metrics/{dataset_name}/{k}', v, current_iter)
        dist_utils.barrier()
        return results

    def probability(self, image: torch.Tensor, tile: int = 512, overlap: int = 64) -> np.ndarray:
        """H x W artifact probability of one 1 x C x H x W image with the inference network (EMA if any)."""
        from desra.detection.localizer import predict_probability_tensor

        return predict_probability_tensor(self.inference_network().eval(), image, tile, overlap,
                                          device=self.device).numpy()
