"""minillm: every stage of LLM training, from raw bytes to RLHF, written to be read.

Install the CPU build of PyTorch first (a plain `pip install torch` pulls several GB of CUDA wheels):

    pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu   # or the local wheel
    pip install --no-build-isolation -e ".[dev,lessons]"

`--no-build-isolation` matters: without it pip builds in a fresh environment that may import a
different torch. Set MINILLM_BUILD_EXT=1 to compile the C++ (and, with a CUDA torch, CUDA) kernels
ahead of time; otherwise they are compiled on first use (JIT) and cached.
"""
import os

from setuptools import find_packages, setup

ext_modules, cmdclass = [], {}
if os.environ.get("MINILLM_BUILD_EXT") == "1":  # optional ahead-of-time build of the kernels
    from minillm.kernels.build import aot_extensions  # imports torch: needs --no-build-isolation

    ext_modules, cmdclass = aot_extensions()

setup(
    name="minillm",
    version="0.1.0",
    description="Every stage of LLM training, from raw bytes to RLHF, written from scratch to be read.",
    packages=find_packages(include=["minillm", "minillm.*"]),
    package_data={"minillm": ["../csrc/*", "data/*.json"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.1",  # install the CPU wheel first; this range then installs nothing more
        "numpy",
        "tiktoken>=0.6",
        "safetensors",
        "tqdm",
        "matplotlib",
    ],
    extras_require={
        "dev": ["pytest", "pytest-timeout", "hypothesis", "nbclient", "nbformat", "ipykernel", "ninja"],
        "lessons": ["jupyter", "matplotlib", "ipykernel"],
        "hf": ["transformers"],
    },
    entry_points={"console_scripts": ["minillm=minillm.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
