"""The offline quickstart runs end to end and prints its table."""

from speechbrain_lora_experts import quickstart


def test_quickstart_tiny(tmp_path, capsys):
    systems = quickstart.main(
        [
            f"--out={tmp_path}",
            "--per_split=3,1,1",
            "--epochs=1",
            "--batch_size=2",
        ]
    )
    assert set(systems) == {"multilingual_lora", "fusion_gate"}
    for metrics in systems.values():
        assert set(metrics["per_language"]) == {"de", "es"}
    printed = capsys.readouterr().out
    assert "| fusion_gate |" in printed and "de (WER)" in printed
    assert (tmp_path / "expert_pool" / "de" / "adapter_config.json").exists()
    assert (tmp_path / "fusion_gate" / "model" / "model.json").exists()
    # Repeating the command reuses every finished step.
    again = quickstart.main(
        [
            f"--out={tmp_path}",
            "--per_split=3,1,1",
            "--epochs=1",
            "--batch_size=2",
        ]
    )
    assert again == systems
