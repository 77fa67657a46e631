"""Network architectures, one file per family; importing registers them in ``ARCH_REGISTRY``."""
from desra.archs import (alexnet_arch, deeplab_arch, discriminator_arch, inception_arch, resnet_arch,  # noqa: F401
                         rrdbnet_arch, span_arch, srresnet_arch, vgg_arch)
