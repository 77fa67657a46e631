"""Network architectures, one file per family; importing registers them in ``ARCH_REGISTRY``."""
from desra.archs import (alexnet_arch, discriminator_arch, inception_arch, rrdbnet_arch, span_arch,  # noqa: F401
                         srresnet_arch, vgg_arch)
