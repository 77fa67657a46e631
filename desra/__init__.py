"""DeSRA / LDL research framework for GAN super-resolution artifacts."""

__version__ = '0.1.0'


def pseudo_gt(mse_sr, gan_sr, mask, feather=0):
    """Pseudo-GT of DeSRA Sec. 3.3: ``M * mse_sr + (1 - M) * gan_sr`` with ``M`` the artifact mask at SR size.

    Lazy alias of :func:`desra.finetune.pseudo_gt.pseudo_gt` (``import desra`` does not import torch; numpy
    inputs never do). Images: numpy ``H x W x C`` or torch ``B x C x H x W`` / ``C x H x W``; mask ``H x W``
    (torch also ``B x H x W`` / ``B x 1 x H x W``), bool, 0/1, 0/255 or floats in [0, 1]. ``feather=0``
    selects pixels exactly; ``feather=sigma > 0`` softens the mask edge with a Gaussian of ``sigma`` pixels.
    """
    from desra.finetune.pseudo_gt import pseudo_gt as _pseudo_gt

    return _pseudo_gt(mse_sr, gan_sr, mask, feather=feather)
