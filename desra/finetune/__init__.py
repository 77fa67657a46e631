"""Fine-tuning data for DeSRA (Sec. 3.3): pseudo ground truth from MSE-SR, GAN-SR and the artifact mask.

``desra.finetune.pseudo_gt`` holds :func:`~desra.finetune.pseudo_gt.pseudo_gt` and
:func:`~desra.finetune.pseudo_gt.feather_mask`; ``scripts/make_pseudo_gt.py`` builds the paired
(real LR, pseudo-GT) training and validation sets from a detection run.
"""
