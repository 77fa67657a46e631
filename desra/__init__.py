"""DeSRA / LDL research framework for GAN super-resolution artifacts."""

__version__ = '0.1.0'
