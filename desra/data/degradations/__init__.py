"""Real-ESRGAN's degradation model, as pure functions and small modules (numpy and torch, any device).

BasicSR's public names and signatures are kept, so code and knowledge carry over; each function also takes an
optional ``rng`` (numpy :class:`~numpy.random.Generator`) or ``generator`` (:class:`torch.Generator`) so that a
training run can draw every random choice from seeded generators (exact resume). Without one, the global
``random`` / ``np.random`` / torch RNGs are used in BasicSR's order.

=========================  ==========================================================================================
kernels (numpy)            ``bivariate_Gaussian``, ``bivariate_generalized_Gaussian``, ``bivariate_plateau``,
                           ``random_mixed_kernels``, ``circular_lowpass_kernel`` (sinc), ``mesh_grid``,
                           ``sigma_matrix2`` and the ``random_bivariate_*`` draws
filtering (torch)          ``filter2D`` (per-image or shared kernels, BORDER_REFLECT_101), ``USMSharp``,
                           ``usm_sharp`` (numpy), ``resize_pt`` (the ``area`` / ``bilinear`` / ``bicubic`` modes)
noise                      ``add_gaussian_noise_pt``, ``add_poisson_noise_pt``, ``random_add_*_pt`` with
                           ``gray_noise`` / ``gray_prob``; numpy versions without ``_pt``
JPEG                       ``DiffJPEG`` (batched, per-image quality, optional differentiable rounding),
                           ``add_jpg_compression`` (OpenCV, numpy)
the whole pipeline         :class:`desra.data.degradations.pipeline.RealESRGANDegradation` and the training-pair
                           pool :class:`~desra.data.degradations.pipeline.TrainingPairPool`
=========================  ==========================================================================================

Every formula and parameter range is in the docstring of its module.
"""
from desra.data.degradations.filtering import RESIZE_MODES, USMSharp, filter2D, reflect101_pad, resize_pt, usm_sharp
from desra.data.degradations.jpeg import (DiffJPEG, add_jpg_compression, diff_round, quality_to_factor,
                                          random_add_jpg_compression)
from desra.data.degradations.kernels import (KERNEL_TYPES, bivariate_Gaussian, bivariate_generalized_Gaussian,
                                             bivariate_plateau, circular_lowpass_kernel, mesh_grid, pdf2,
                                             random_bivariate_Gaussian, random_bivariate_generalized_Gaussian,
                                             random_bivariate_plateau, random_mixed_kernels, sigma_matrix2)
from desra.data.degradations.noise import (add_gaussian_noise, add_gaussian_noise_pt, add_poisson_noise,
                                           add_poisson_noise_pt, generate_gaussian_noise, generate_gaussian_noise_pt,
                                           generate_poisson_noise, generate_poisson_noise_pt,
                                           random_add_gaussian_noise, random_add_gaussian_noise_pt,
                                           random_add_poisson_noise, random_add_poisson_noise_pt,
                                           random_generate_gaussian_noise, random_generate_gaussian_noise_pt,
                                           random_generate_poisson_noise, random_generate_poisson_noise_pt,
                                           rgb_to_grayscale_pt)

__all__ = [
    'RESIZE_MODES', 'USMSharp', 'filter2D', 'reflect101_pad', 'resize_pt', 'usm_sharp', 'DiffJPEG',
    'add_jpg_compression', 'diff_round', 'quality_to_factor', 'random_add_jpg_compression', 'KERNEL_TYPES',
    'bivariate_Gaussian', 'bivariate_generalized_Gaussian', 'bivariate_plateau', 'circular_lowpass_kernel',
    'mesh_grid', 'pdf2', 'random_bivariate_Gaussian', 'random_bivariate_generalized_Gaussian',
    'random_bivariate_plateau', 'random_mixed_kernels', 'sigma_matrix2', 'add_gaussian_noise',
    'add_gaussian_noise_pt', 'add_poisson_noise', 'add_poisson_noise_pt', 'generate_gaussian_noise',
    'generate_gaussian_noise_pt', 'generate_poisson_noise', 'generate_poisson_noise_pt', 'random_add_gaussian_noise',
    'random_add_gaussian_noise_pt', 'random_add_poisson_noise', 'random_add_poisson_noise_pt',
    'random_generate_gaussian_noise', 'random_generate_gaussian_noise_pt', 'random_generate_poisson_noise',
    'random_generate_poisson_noise_pt', 'rgb_to_grayscale_pt',
]
