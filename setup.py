"""Package metadata for vos_det; install with ``pip install -e .`` (see tools/install.sh)."""
from setuptools import find_packages, setup

setup(
    name="vos_det",
    version="0.1.0",
    description="Virtual Outlier Synthesis (VOS) for out-of-distribution detection in Detectron2",
    python_requires=">=3.9",
    packages=find_packages(exclude=("tests", "tools", "benchmarks", "configs", "datasets")),
    # torch, torchvision and detectron2 are installed by tools/install.sh (detectron2 is not on PyPI).
    install_requires=["numpy<2", "scikit-learn", "scipy", "tqdm", "matplotlib", "Pillow"],
)
