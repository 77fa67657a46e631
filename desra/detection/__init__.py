"""DeSRA artifact detection: indicator D, semantic adjustment, morphology and the detector.

The names below are imported on first use (PEP 562): ``desra.detection.pipeline`` validates options and
inputs without importing torch.
"""
import importlib

_LAZY = {
    'ADE20K_CLASSES': 'desra.detection.ade20k', 'detect_artifacts': 'desra.detection.detector',
    'texture_similarity': 'desra.detection.indicator', 'clean_mask': 'desra.detection.morphology',
    'ClassHistogram': 'desra.detection.semantics', 'load_class_weights': 'desra.detection.semantics',
    'read_class_file': 'desra.detection.semantics', 'semantic_adjust': 'desra.detection.semantics',
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'desra.detection' has no attribute {name!r}")
