"""Network architectures, one file per family; importing registers them in ``ARCH_REGISTRY``."""
from desra.archs import discriminator_arch, rrdbnet_arch, span_arch, srresnet_arch, vgg_arch  # noqa: F401
