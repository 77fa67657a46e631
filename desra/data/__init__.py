"""Datasets, transforms and image I/O; importing registers the datasets in ``DATASET_REGISTRY``."""
from desra.data.io import (IMG_EXTENSIONS, imfrombytes, img2tensor, imread, imwrite, imwrite_atomic,  # noqa: F401
                           is_image_file, scandir, tensor2img)
from desra.data.paired_image_dataset import PairedImageDataset  # noqa: F401
from desra.data.single_image_dataset import SingleImageDataset  # noqa: F401
from desra.data.transforms import augment, mod_crop, paired_random_crop  # noqa: F401
