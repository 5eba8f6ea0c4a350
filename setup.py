"""RobustCNN: Robust-ResNet ("Can CNNs Be More Robust Than Transformers?", ICLR 2023) as timm models,
with training and out-of-distribution evaluation tools."""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r"__version__ = '([^']+)'", (HERE / 'robustcnn' / 'version.py').read_text()).group(1)

# Tested minimums. torch is deliberately not pinned to one version: a CPU-only local wheel breaks PyPI's
# torchvision, while PyPI's CUDA builds run fine on a CPU.
INSTALL_REQUIRES = [
    'torch>=2.4',
    'torchvision>=0.19',
    # 1.0.31: ClassifierHead.num_features (1.0.29-1.0.30 lack it; 1.0.28 also get_device_dtype), and a
    # RepeatAugSampler that gives datasets under 256 images samples at all (1.0.30's gives none)
    'timm>=1.0.31,<1.1',
    'numpy>=1.24',
    'pyyaml>=6.0',
    'pillow>=10.0',
    'safetensors>=0.4',
]
EXTRAS_REQUIRE = {
    'report': ['matplotlib>=3.7'],
    'tensorboard': ['tensorboard>=2.14'],    # --log-tensorboard
    'wandb': ['wandb>=0.19'],                # --log-wandb
    'download': ['gdown>=5.0'],              # robustcnn download (the released weights on Google Drive)
    # validate.py --attack (FGSM, PGD, AutoAttack's components); adversarial training needs nothing extra
    'adv': ['torchattacks>=3.5,<4'],
}
EXTRAS_REQUIRE['dev'] = ['pytest>=8.0', 'pytest-timeout>=2.3', 'matplotlib>=3.7', *EXTRAS_REQUIRE['tensorboard'],
                         *EXTRAS_REQUIRE['wandb'], *EXTRAS_REQUIRE['download'], *EXTRAS_REQUIRE['adv'],
                         'scikit-learn>=1.3']  # only as an independent check of ImageNet-O's AUPR/AUROC in the tests

setup(
    name='robustcnn',
    version=VERSION,
    description='Robust-ResNet models (ICLR 2023) for timm, with training and OOD-robustness evaluation',
    long_description=(HERE / 'README.md').read_text(encoding='utf-8') if (HERE / 'README.md').exists() else '',
    long_description_content_type='text/markdown',
    license='MIT',
    python_requires='>=3.10',
    packages=find_packages(include=['robustcnn', 'robustcnn.*']),
    include_package_data=True,
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={'console_scripts': ['robustcnn=robustcnn.__main__:console_main']},
    classifiers=[
        'Programming Language :: Python :: 3.10',
        'Programming Language :: Python :: 3.11',
        'Programming Language :: Python :: 3.12',
        'Topic :: Scientific/Engineering :: Artificial Intelligence',
    ],
)
