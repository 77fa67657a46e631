"""Artifact detectors selectable in YAML (``detector.type``): ``desra`` and the paper's Table 1 baselines.

Every detector maps an (MSE-SR, GAN-SR) pair of uint8-range H x W x 3 images to a full-size uint8 0/255 mask
and a dict of maps (``'D'``: the map that was thresholded, for pictures; ``'P'``: a localiser's probability).
The baselines use the same morphology as DeSRA, so the mask metrics compare like with like. The ``localizer``
needs only the GAN-SR image (``needs_mse = False``); the MSE-SR argument may then be None.
"""
from __future__ import annotations

import numpy as np

from desra.registry import DETECTOR_REGISTRY

@DETECTOR_REGISTRY.register(name='desra')
class DeSRADetector:
    """DeSRA-det: texture-similarity indicator D (Eq. 7), semantic adjustment (Eq. 8-9), threshold, morphology.

    All keyword arguments are those of :func:`desra.detection.detect_artifacts`.
    """

    uses_semantics = True

    def __init__(self, threshold=0.7, window='gaussian', window_size=11, sigma=1.5, constant=58.5225, erode=5,
                 dilate=5, dilate_iterations=3, fill_holes=3, min_area=4000, official_crop=False):
        self.kwargs = dict(threshold=threshold, window=window, window_size=window_size, sigma=sigma,
                           constant=constant, erode=erode, dilate=dilate, dilate_iterations=dilate_iterations,
                           fill_holes=fill_holes, min_area=min_area, official_crop=official_crop)

    def __call__(self, mse_sr: np.ndarray, gan_sr: np.ndarray, labels=None, class_weights=None):
        from desra.detection.detector import detect_artifacts

        mask, maps = detect_artifacts(mse_sr, gan_sr, labels=labels, class_weights=class_weights,
                                      return_maps=True, **self.kwargs)
        return mask, maps


class _ThresholdedMapDetector:
    """Shared part of the baselines: a map, a threshold, then DeSRA's morphology at full size."""

    uses_semantics = False

    def __init__(self, erode=5, dilate=5, dilate_iterations=3, fill_holes=3, min_area=4000):
        self.morphology = dict(erode=erode, dilate=dilate, dilate_iterations=dilate_iterations,
                               fill_holes=fill_holes, min_area=min_area)

    def finish(self, binary: np.ndarray, score_map: np.ndarray):
        """Morphology on a thresholded map (public so callers can re-threshold one map several times)."""
        from desra.detection.morphology import clean_mask

        return clean_mask(binary, **self.morphology), {'D': score_map}


@DETECTOR_REGISTRY.register(name='ldl_star')
class LDLStarDetector(_ThresholdedMapDetector):
    """LDL*: LDL's artifact map with MSE-SR standing in for the GT; artifact where map > ``threshold``.

    The paper's Table 1 uses thresholds 0.01, 0.005 and 0.001.
    """

    def __init__(self, threshold=0.005, kernel_size=7, **morphology):
        super().__init__(**morphology)
        self.threshold, self.kernel_size = threshold, kernel_size

    def __call__(self, mse_sr, gan_sr, labels=None, class_weights=None):
        from desra.detection.baselines import ldl_star_map

        score = np.asarray(ldl_star_map(mse_sr, gan_sr, kernel_size=self.kernel_size), dtype=np.float64)
        return self.finish(score > self.threshold, score)


@DETECTOR_REGISTRY.register(name='niqe')
class NIQEDetector(_ThresholdedMapDetector):
    """Sliding-window NIQE map of the GAN-SR image; artifact where the window score > ``threshold``.

    There is no universal threshold (the paper reports the best one per data set). On 16 clean photos the
    per-photo median window score is 5.5-18 (10 typical; 95th percentile 8-29) with MATLAB's pristine parameters,
    12-29 (20 typical; 95th percentile 19-70) with the shipped fallback
    (see :func:`desra.metrics.niqe.resolve_niqe_params`).
    """

    def __init__(self, threshold=None, window=96, stride=32, params=None, **morphology):
        if threshold is None:
            raise ValueError('threshold is required for the niqe detector; choose it on your data (clean photos '
                             'score about 10 at the median window with MATLAB\'s parameters, 20 with the shipped ones)')
        super().__init__(**morphology)
        self.threshold, self.window, self.stride, self.params = threshold, window, stride, params

    def __call__(self, mse_sr, gan_sr, labels=None, class_weights=None):
        from desra.metrics.niqe import niqe_map

        score = np.asarray(niqe_map(gan_sr, window=self.window, stride=self.stride, params=self.params),
                           dtype=np.float64)
        return self.finish(score > self.threshold, score)


@DETECTOR_REGISTRY.register(name='localizer')
class LocalizerDetector:
    """``detector.type: localizer``: a trained localiser's probability map, thresholded, then DeSRA's morphology.

    Needs only the restored (GAN-SR) image; an MSE-SR image is used only by a localiser trained with it
    (``in_channels: 6``). Maps: ``'P'`` the probability (saved and shown in the gallery).

    Args:
        network: the architecture (e.g. ``{type: DeepLabV3Plus, encoder_name: resnet18}``).
        checkpoint: the trained weights (``experiments/<name>/models/net_l_<iter>.pth``).
        param_key: ``params_ema`` (default; falls back to ``params``) or ``params``.
        threshold: probability above which a pixel is an artifact (0.5).
        tile, overlap: sliding windows (see :func:`desra.detection.localizer.predict_probability`).
        erode, dilate, dilate_iterations, fill_holes, min_area: the morphology of :mod:`desra.detection`
            (``min_area`` 0 keeps every region).
        device: where the network runs (default: CUDA when available).
    """

    uses_semantics = False
    needs_mse = False

    def __init__(self, network=None, checkpoint=None, param_key='params_ema', threshold=0.5, tile=512, overlap=64,
                 erode=5, dilate=5, dilate_iterations=3, fill_holes=3, min_area=4000, device=None):
        if not isinstance(network, dict) or 'type' not in network:
            raise ValueError('network: give the localiser architecture, e.g. {type: DeepLabV3Plus, '
                             'encoder_name: resnet18}')
        if not checkpoint:
            raise ValueError('checkpoint: give the trained localiser (e.g. experiments/<name>/models/net_l_<iter>.pth)')
        if not 0.0 < float(threshold) < 1.0:
            raise ValueError(f'threshold: a probability in (0, 1), got {threshold}')
        import torch

        from desra.detection.localizer import in_channels_of, load_localizer
        from desra.engine.dist import get_device

        self.device = torch.device(device) if device else get_device('auto')
        self.net = load_localizer(network, checkpoint, param_key, self.device)
        self.needs_mse = in_channels_of(self.net) == 6
        self.threshold, self.tile, self.overlap = float(threshold), int(tile), int(overlap)
        self.morphology = dict(erode=erode, dilate=dilate, dilate_iterations=dilate_iterations,
                               fill_holes=fill_holes, min_area=min_area)

    def probability(self, gan_sr: np.ndarray, mse_sr: np.ndarray | None = None) -> np.ndarray:
        """The H x W artifact probability of a restored image (float32 in [0, 1])."""
        from desra.detection.localizer import predict_probability

        return predict_probability(self.net, gan_sr, mse_sr if self.needs_mse else None, self.tile, self.overlap,
                                   device=self.device)

    def __call__(self, mse_sr, gan_sr, labels=None, class_weights=None):
        from desra.detection.morphology import clean_mask

        prob = self.probability(gan_sr, mse_sr)
        return clean_mask(prob > self.threshold, **self.morphology), {'P': prob}
