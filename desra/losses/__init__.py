"""Losses; importing registers them in ``LOSS_REGISTRY``."""
from desra.losses.basic_loss import CharbonnierLoss, L1Loss, MSELoss, PerceptualLoss  # noqa: F401
from desra.losses.gan_loss import GANLoss  # noqa: F401
from desra.losses.ldl_loss import LDLArtifactLoss, ldl_artifact_map  # noqa: F401
from desra.losses.seg_loss import BCEDiceLoss, BCEWithLogitsLoss, SoftDiceLoss, soft_dice_loss  # noqa: F401
