"""Experts as standard PEFT adapters, checked against PEFT itself."""

import json
import os

import pytest
import torch

from speechbrain_lora_experts.attach import WhisperLoRAExperts
from speechbrain_lora_experts.peft_io import (
    AdapterError,
    attach_from_adapters,
    load_expert,
    read_adapter,
    save_expert,
)

TOKENS = torch.tensor([[50258, 50262, 50359, 50363, 300, 301, 302]] * 2)


def hf_whisper(folder):
    from transformers import WhisperForConditionalGeneration

    return WhisperForConditionalGeneration.from_pretrained(folder).eval()


def our_logits(sb_whisper, mel):
    enc = sb_whisper.forward_encoder(mel)
    return sb_whisper.forward_decoder(enc, TOKENS, use_cache=False)[0]


@pytest.fixture
def mel(sb_whisper):
    torch.manual_seed(5)
    return sb_whisper._get_mel(torch.randn(2, 12000) * 0.1)


def test_our_expert_loads_in_peft_with_equal_outputs(
    sb_whisper, tiny_whisper_dir, mel, tmp_path
):
    from peft import PeftModel

    experts = WhisperLoRAExperts(
        sb_whisper,
        expert_names=["de", "es"],
        rank=4,
        alpha=16,
        targets=["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    )
    torch.manual_seed(1)
    with torch.no_grad():
        for p in experts.parameters():
            p.normal_(0, 0.3)
    folder = save_expert(
        experts, "es", tmp_path / "es", tiny_whisper_dir, language="es"
    )
    assert sorted(os.listdir(folder)) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "lora_experts.json",
    ]
    peft_model = PeftModel.from_pretrained(hf_whisper(tiny_whisper_dir), folder)
    with torch.no_grad():
        theirs = peft_model(input_features=mel, decoder_input_ids=TOKENS).logits
        experts.route(1)
        folded = our_logits(sb_whisper, mel)
        experts.off()
        base = our_logits(sb_whisper, mel)
    with torch.enable_grad():
        # With gradients, the LoRA path runs as PEFT's does.
        experts.route(1)
        ours = our_logits(sb_whisper, mel).detach()
        experts.off()
    assert (ours - theirs).abs().max() <= 1e-5
    # Inference folds W + BA once: the same function, other float rounding
    # (these random experts are large: |BA| is comparable to |W|).
    assert (folded - theirs).abs().max() <= 2e-4
    assert (base - theirs).abs().max() > 1e-2  # the adapter matters


@pytest.mark.parametrize("rslora", [False, True])
def test_peft_adapter_imports_as_expert_with_equal_outputs(
    sb_whisper, tiny_whisper_dir, mel, tmp_path, rslora
):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(2)
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj", "fc1"],
        init_lora_weights=False,
        use_rslora=rslora,
        rank_pattern={"fc1": 2},
    )
    peft_model = get_peft_model(hf_whisper(tiny_whisper_dir), config).eval()
    peft_model.save_pretrained(tmp_path / "foreign")
    with torch.no_grad():
        theirs = peft_model(input_features=mel, decoder_input_ids=TOKENS).logits
    adapter = read_adapter(tmp_path / "foreign")
    assert adapter.ranks["decoder.layers.1.fc1"] == 2
    assert adapter.ranks["encoder.layers.0.self_attn.q_proj"] == 4
    experts = attach_from_adapters(sb_whisper, [adapter], names=["xx"])
    assert set(experts.layers) == set(adapter.weights)
    experts.route(0)
    with torch.no_grad():
        ours = our_logits(sb_whisper, mel)
    assert (ours - theirs).abs().max() <= 1e-5


def test_round_trip_and_pool_attach(sb_whisper, tiny_whisper_dir, tmp_path):
    experts = WhisperLoRAExperts(
        sb_whisper, expert_names=["de", "es"], rank=2, targets=["fc1"]
    )
    with torch.no_grad():
        for p in experts.parameters():
            p.normal_()
    for lang in ("de", "es"):
        save_expert(
            experts, lang, tmp_path / lang, tiny_whisper_dir, language=lang
        )
    from speechbrain_lora_experts.whisper import Whisper

    other = Whisper(tiny_whisper_dir, str(tmp_path / "save2"))
    pool = attach_from_adapters(
        other, [tmp_path / "es", tmp_path / "de"], extra_experts=["student"]
    )
    assert pool.expert_names == ["es", "de", "student"]
    name = "decoder.layers.0.fc1"
    mine, theirs = experts.layers[name], pool.layers[name]
    assert torch.equal(theirs.experts[0].lora_A, mine.experts[1].lora_A)
    assert torch.equal(theirs.experts[1].lora_B, mine.experts[0].lora_B)
    assert not theirs.experts[0].lora_A.requires_grad
    assert theirs.experts[2].lora_A.requires_grad
    meta = json.loads((tmp_path / "de" / "lora_experts.json").read_text())
    assert meta["language"] == "de"
    assert meta["base_fingerprint"]["d_model"] == 64


def make_saved(sb_whisper, folder, base, **kwargs):
    experts = WhisperLoRAExperts(sb_whisper, expert_names=["de"], **kwargs)
    return save_expert(experts, "de", folder, base, language="de")


def test_mismatches_give_clear_errors(tiny_whisper_dir, tmp_path):
    from speechbrain_lora_experts.testing.tiny_whisper import make_tiny_whisper
    from speechbrain_lora_experts.whisper import Whisper

    def fresh():
        return Whisper(tiny_whisper_dir, str(tmp_path / "s"))

    saved = make_saved(
        fresh(),
        tmp_path / "r4",
        tiny_whisper_dir,
        rank=4,
        targets=["q_proj", "v_proj"],
    )
    pool = WhisperLoRAExperts(
        fresh(), expert_names=["de"], rank=8, targets=["q_proj", "v_proj"]
    )
    with pytest.raises(AdapterError, match="rank 4 but the pool expects"):
        load_expert(pool, "de", saved)
    pool = WhisperLoRAExperts(
        fresh(), expert_names=["de"], rank=4, targets=["q_proj"]
    )
    with pytest.raises(AdapterError, match="adapts layers the pool lacks"):
        load_expert(pool, "de", saved)
    pool = WhisperLoRAExperts(
        fresh(),
        expert_names=["de"],
        rank=4,
        targets=["q_proj", "v_proj", "fc1"],
    )
    with pytest.raises(AdapterError, match="does not adapt pool layers"):
        load_expert(pool, "de", saved)
    load_expert(pool, "de", saved, strict=False)  # subset allowed on request

    wide = make_tiny_whisper(tmp_path / "wide", d_model=32, ffn_dim=64)
    other = Whisper(wide, str(tmp_path / "s2"))
    saved_wide = make_saved(
        other, tmp_path / "wide_de", wide, rank=4, targets=["q_proj", "v_proj"]
    )
    pool = WhisperLoRAExperts(
        fresh(), expert_names=["de"], rank=4, targets=["q_proj", "v_proj"]
    )
    with pytest.raises(AdapterError) as error:
        load_expert(pool, "de", saved_wide)
    message = str(error.value)
    assert "trained on another base model" in message
    assert "d_model 32 vs 64" in message
    assert "lora_A expects 32 inputs, the base layer has 64" in message

    # Foreign adapter without our metadata: the shapes still catch it.
    os.remove(os.path.join(saved_wide, "lora_experts.json"))
    with pytest.raises(AdapterError, match="lora_B gives 32 outputs"):
        load_expert(pool, "de", saved_wide)

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8})
    )
    (pickled / "adapter_model.bin").write_bytes(b"not unpickled")
    with pytest.raises(AdapterError, match="never loaded"):
        read_adapter(pickled)
    with pytest.raises(AdapterError, match="not a PEFT adapter folder"):
        read_adapter(tmp_path / "nowhere")
    cfg = json.loads((tmp_path / "r4" / "adapter_config.json").read_text())
    cfg["use_dora"] = True
    (tmp_path / "r4" / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(AdapterError, match="use_dora"):
        read_adapter(tmp_path / "r4")


def test_rebuilt_pool_keeps_module_order_and_short_export_form(
    sb_whisper, tiny_whisper_dir, tmp_path
):
    """Adapter files list layers sorted (decoder before encoder); the
    rebuilt pool still has the attached pool's layer and parameter order,
    so its export names targets instead of every layer."""
    from speechbrain_lora_experts.export import lora_info
    from speechbrain_lora_experts.whisper import Whisper

    experts = WhisperLoRAExperts(
        sb_whisper, expert_names=["de"], rank=2, targets=["q_proj", "fc1"]
    )
    save_expert(experts, "de", tmp_path / "de", tiny_whisper_dir)
    assert list(read_adapter(tmp_path / "de").layer_names) != list(
        experts.layers
    )  # the file's order differs: the case under test
    other = Whisper(tiny_whisper_dir, str(tmp_path / "save2"))
    pool = attach_from_adapters(other, [tmp_path / "de"])
    assert list(pool.layers) == list(experts.layers)
    assert [n for n, _ in pool.named_parameters()] == [
        n for n, _ in experts.named_parameters()
    ]
    info = lora_info(pool)
    assert info["targets"] == ["q_proj", "fc1"] or sorted(info["targets"]) == [
        "fc1",
        "q_proj",
    ]
    assert info["layer_names"] is None, info["layer_names"]
