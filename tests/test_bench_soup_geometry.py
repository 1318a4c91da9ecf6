"""bench/soup_geometry.py: the soup's update against its ingredients."""

import json
import os
import sys

import torch

from speechbrain_lora_experts.attach import WhisperLoRAExperts
from speechbrain_lora_experts.peft_io import save_expert
from speechbrain_lora_experts.testing.tiny_whisper import tiny_whisper_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import soup_geometry  # noqa: E402


def test_rows_per_language_from_a_quality_work_folder(tmp_path):
    whisper = tiny_whisper_model()
    pool = WhisperLoRAExperts(
        whisper, expert_names=["multilingual", "de"], rank=2, targets=["fc1"]
    )
    torch.manual_seed(0)
    for p in pool.expert_parameters("multilingual"):
        torch.nn.init.normal_(p)
    # de's update is the multilingual one, doubled: same direction.
    for ours, theirs in zip(
        pool.expert_parameters("de"), pool.expert_parameters("multilingual")
    ):
        with torch.no_grad():
            ours.copy_(theirs)
    for layer in pool.layers.values():
        layer.experts[1].alpha *= 2
    seed = tmp_path / "seed1"
    save_expert(pool, "multilingual", str(seed / soup_geometry.MULTILINGUAL))
    save_expert(pool, "de", str(seed / "pool" / "de"), language="de")

    md = soup_geometry.main(
        ["--work", str(tmp_path), "--seeds", "1", "--out", str(tmp_path)]
    )
    rows = json.loads((tmp_path / "soup_geometry.json").read_text())["rows"]
    assert [(r["seed"], r["language"]) for r in rows] == [(1, "de")]
    # soup = (d + 2d) / 2 = 1.5 d: 1.5x the multilingual, 0.75x the expert.
    assert abs(rows[0]["cos"] - 1.0) < 1e-9
    assert abs(rows[0]["soup_over_ml"] - 1.5) < 1e-9
    assert abs(rows[0]["soup_over_expert"] - 0.75) < 1e-9
    assert rows[0]["layers"] == len(pool.layers)
    assert "| 1 | de | 1.000 | 1.500 | 0.750 |" in open(md).read()
