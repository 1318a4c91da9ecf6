"""LoRA language experts for multilingual Whisper finetuning in SpeechBrain.

A frozen Whisper carries a pool of per-language LoRA experts that can be
routed per utterance, fused by a learned gate, merged into the weights, or
distilled into one multilingual LoRA student (Interspeech 2025,
arXiv:2506.21555). Experts are stored as standard PEFT LoRA adapters.

Authors
 * speechbrain-lora-experts developers 2026
"""

__version__ = "0.1.0"
