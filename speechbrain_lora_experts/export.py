"""What a finished training run leaves behind.

* the expert recipe adds its expert to the pool: ``<expert_pool>/<lang>/``
  (a PEFT adapter folder);
* every run writes ``<output_folder>/model/``: its experts (or student) as
  PEFT folders under ``experts/``, the fusion gate as safetensors,
  fully finetuned weights as an HF Whisper folder, and ``model.json``
  saying how to assemble them (read by the pretrained interface).

Authors
 * speechbrain-lora-experts developers 2026
"""

import json
import logging
import os

from speechbrain_lora_experts.peft_io import save_expert

logger = logging.getLogger(__name__)
MODEL_INFO = "model.json"
GATE_WEIGHTS = "gate.safetensors"


def export_run(brain):
    """Writes the pool entry (expert runs) and ``<output_folder>/model``."""
    hparams = brain.hparams
    system = hparams.system
    experts = getattr(hparams, "experts", None)
    whisper_hub = hparams.whisper_hub
    model_dir = os.path.join(hparams.output_folder, "model")
    os.makedirs(model_dir, exist_ok=True)
    info = {
        "system": system,
        "languages": list(hparams.languages),
        "language_aware": bool(hparams.language_aware),
        "whisper_hub": whisper_hub,
        "encoder_window_s": float(hparams.encoder_window_s),
        "experts": [],
    }
    training = {
        "system": system,
        "epochs": hparams.epoch_counter.current,
        "data_folder": str(getattr(hparams, "data_folder", "")),
    }
    if system == "expert":
        lang = hparams.languages[0]
        folder = os.path.join(hparams.expert_pool, lang)
        save_expert(
            experts, 0, folder, whisper_hub, language=lang, metadata=training
        )
        logger.info("expert for %s written to %s", lang, folder)
    if experts is not None:
        keep = (
            ["student"] if system == "distill" else list(experts.expert_names)
        )
        for name in keep:
            lang = name if name in hparams.languages else None
            save_expert(
                experts,
                name,
                os.path.join(model_dir, "experts", name),
                whisper_hub,
                language=lang,
                metadata=training,
            )
            info["experts"].append(name)
    gate = getattr(hparams, "gate", None)
    if system == "fuse":
        info["gate_level"] = getattr(hparams, "gate_level", "utterance")
        if info["gate_level"] == "utterance":
            from safetensors.torch import save_file

            save_file(
                {k: v.contiguous() for k, v in gate.state_dict().items()},
                os.path.join(model_dir, GATE_WEIGHTS),
            )
            info["gate"] = {
                "hidden_size": gate.hidden.out_features,
                "temperature": gate.temperature,
                "top_k": gate.top_k,
                "language_aware": gate.language_aware,
            }
        else:
            from safetensors.torch import save_file

            save_file(
                {
                    k: v.contiguous()
                    for k, v in experts.token_gates.state_dict().items()
                },
                os.path.join(model_dir, "token_gates.safetensors"),
            )
    if system == "full_finetune":
        whisper_dir = os.path.join(model_dir, "whisper")
        hparams.whisper.model.save_pretrained(whisper_dir)
        hparams.whisper.tokenizer.save_pretrained(whisper_dir)
        hparams.whisper.feature_extractor.save_pretrained(whisper_dir)
        info["whisper_weights"] = "whisper"
    with open(os.path.join(model_dir, MODEL_INFO), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2)
    return model_dir
