"""Datasets, transforms and image I/O.

The names below are imported on first use (PEP 562), so ``from desra.data.io import imread`` does not import
torch. :func:`register_datasets` (called by :func:`desra.data.build.build_dataset`) imports the built-in
dataset modules, whose decorators fill ``DATASET_REGISTRY``.
"""
import importlib

_LAZY = {
    'IMG_EXTENSIONS': 'desra.data.io', 'imfrombytes': 'desra.data.io', 'img2tensor': 'desra.data.io',
    'imread': 'desra.data.io', 'imwrite': 'desra.data.io', 'imwrite_atomic': 'desra.data.io',
    'is_image_file': 'desra.data.io', 'scandir': 'desra.data.io', 'tensor2img': 'desra.data.io',
    'PairedImageDataset': 'desra.data.paired_image_dataset', 'SingleImageDataset': 'desra.data.single_image_dataset',
    'augment': 'desra.data.transforms', 'mod_crop': 'desra.data.transforms',
    'paired_random_crop': 'desra.data.transforms',
    'RealESRGANDataset': 'desra.data.realesrgan_dataset', 'RealESRGANPairedDataset': 'desra.data.realesrgan_dataset',
    'ArtifactMaskDataset': 'desra.data.artifact_mask_dataset',
}

DATASET_MODULES = ('desra.data.paired_image_dataset', 'desra.data.single_image_dataset',
                   'desra.data.realesrgan_dataset', 'desra.data.artifact_mask_dataset')

__all__ = sorted(_LAZY) + ['register_datasets']


def register_datasets() -> None:
    for mod in DATASET_MODULES:
        importlib.import_module(mod)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'desra.data' has no attribute {name!r}")
