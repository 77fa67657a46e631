"""Install with ``pip install -e .`` (after installing a pinned torch, see README)."""
import os

from setuptools import find_packages, setup

here = os.path.dirname(os.path.abspath(__file__))


def read_requirements():
    with open(os.path.join(here, 'requirements.txt'), encoding='utf-8') as f:
        return [line.strip() for line in f if line.strip() and not line.startswith('#')]


def read_version():
    with open(os.path.join(here, 'desra', '__init__.py'), encoding='utf-8') as f:
        for line in f:
            if line.startswith('__version__'):
                return line.split('=')[1].strip().strip("'\"")
    raise RuntimeError('no __version__ in desra/__init__.py')


setup(
    name='desra',
    version=read_version(),
    description='GAN super-resolution artifacts: LDL training, DeSRA detection and fine-tuning (PyTorch)',
    long_description=open(os.path.join(here, 'README.md'), encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['desra', 'desra.*']),
    package_data={'desra': ['resources/*']},
    python_requires='>=3.10',
    install_requires=read_requirements(),
    # onnx: scripts/export_onnx.py (onnxscript only for --exporter dynamo); the test extra has onnx and
    # onnxruntime so that tests/test_onnx_export.py runs (CPU wheels, ~9 + 24 MB, no torch dependency).
    extras_require={'test': ['pytest', 'scikit-image', 'pillow', 'lmdb', 'onnx==1.23.1', 'onnxruntime==1.30.0'],
                    'demo': ['scikit-image', 'pillow'], 'lmdb': ['lmdb'],
                    'onnx': ['onnx==1.23.1', 'onnxruntime==1.30.0', 'onnxscript==0.7.2']},
    license='Apache-2.0',
    classifiers=['Programming Language :: Python :: 3', 'Topic :: Scientific/Engineering :: Image Processing'],
)
