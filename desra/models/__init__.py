"""Models (one training step each); importing registers them in ``MODEL_REGISTRY``."""
from desra.models import gan_model, localizer_model, sr_model  # noqa: F401  (registration)
from desra.models.base_model import BaseModel, build_loss, build_network, build_optimizer, unwrap  # noqa: F401


def build_model(opt: dict, device):
    from desra.registry import MODEL_REGISTRY

    return MODEL_REGISTRY.get(opt.get('model_type', 'SRModel'), 'model_type')(opt, device)
