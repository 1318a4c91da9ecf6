"""A shared LoRA merged into the base: equal to PEFT's merge_and_unload."""

import pytest
import torch

from speechbrain_lora_experts.peft_io import AdapterError
from speechbrain_lora_experts.shared_adapter import (
    language_step_weights,
    merge_shared_adapter,
)
from speechbrain_lora_experts.testing.tiny_whisper import make_tiny_whisper
from speechbrain_lora_experts.whisper import Whisper


@pytest.fixture
def peft_adapter(tiny_whisper_dir, tmp_path):
    """A random PEFT LoRA (rsLoRA, mixed ranks) saved by PEFT itself."""
    from peft import LoraConfig, get_peft_model
    from transformers import WhisperForConditionalGeneration

    torch.manual_seed(3)
    base = WhisperForConditionalGeneration.from_pretrained(tiny_whisper_dir)
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj", "fc1"],
        init_lora_weights=False,
        use_rslora=True,
        rank_pattern={"fc1": 2},
    )
    model = get_peft_model(base, config)
    model.save_pretrained(tmp_path / "shared")
    merged = model.merge_and_unload().model.state_dict()
    return tmp_path / "shared", merged


def test_merged_weights_equal_peft_merge_and_unload(
    tiny_whisper_dir, peft_adapter, tmp_path
):
    folder, peft_merged = peft_adapter
    whisper = Whisper(tiny_whisper_dir, str(tmp_path / "save"))
    before = {k: v.clone() for k, v in whisper.model.state_dict().items()}
    merge_shared_adapter(whisper, folder)
    assert whisper.shared_adapter == str(folder)
    ours = whisper.model.state_dict()
    changed = [k for k in ours if not torch.equal(ours[k], before[k])]
    # q, v in 2 encoder + 2 decoder layers (decoder: self and cross
    # attention), fc1 in 4 layers: 12 + 4 weights.
    assert len(changed) == 16
    assert all(
        k.endswith(("q_proj.weight", "v_proj.weight", "fc1.weight"))
        for k in changed
    )
    for key in ours:
        assert torch.allclose(ours[key], peft_merged[key], atol=1e-6), key


def test_merging_twice_is_refused(tiny_whisper_dir, peft_adapter, tmp_path):
    folder, _ = peft_adapter
    whisper = Whisper(tiny_whisper_dir, str(tmp_path / "save"))
    merge_shared_adapter(whisper, folder)
    weight = whisper.model.decoder.layers[0].fc1.weight.clone()
    with pytest.raises(AdapterError, match="already merged"):
        merge_shared_adapter(whisper, folder)
    assert torch.equal(whisper.model.decoder.layers[0].fc1.weight, weight)


def test_adapter_of_another_whisper_size_leaves_weights_untouched(
    peft_adapter, tmp_path
):
    folder, _ = peft_adapter
    other = make_tiny_whisper(tmp_path / "wide", d_model=32, ffn_dim=64)
    whisper = Whisper(other, str(tmp_path / "save"))
    before = {k: v.clone() for k, v in whisper.model.state_dict().items()}
    with pytest.raises(AdapterError, match="another Whisper"):
        merge_shared_adapter(whisper, folder)
    after = whisper.model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert whisper.shared_adapter is None


def test_language_step_weighs_the_shared_adapter_at_lid_scale(
    tiny_whisper_dir, peft_adapter, tmp_path
):
    folder, peft_merged = peft_adapter
    base = Whisper(tiny_whisper_dir, str(tmp_path / "base"))
    original = {k: v.clone() for k, v in base.model.state_dict().items()}
    soup = merge_shared_adapter(
        Whisper(tiny_whisper_dir, str(tmp_path / "soup")),
        folder,
        scale=0.5,
        lid_scale=1.0,
    )
    merged = {k: v.clone() for k, v in soup.model.state_dict().items()}
    for key in merged:
        # Outside the step: half the update (PEFT's full merge is W + dW).
        half = original[key] + 0.5 * (peft_merged[key] - original[key])
        assert torch.allclose(merged[key], half, atol=1e-6), key
    with language_step_weights(soup):
        inside = soup.model.state_dict()
        for key in inside:
            assert torch.allclose(inside[key], peft_merged[key], atol=1e-6)
        assert not torch.is_grad_enabled()
    after = soup.model.state_dict()
    # Swapped back, not re-merged: bit for bit, also after an error.
    assert all(torch.equal(after[k], merged[k]) for k in merged)
    with pytest.raises(RuntimeError, match="boom"):
        with language_step_weights(soup):
            raise RuntimeError("boom")
    after = soup.model.state_dict()
    assert all(torch.equal(after[k], merged[k]) for k in merged)
    assert soup.shared_adapter_lid_scale == 1.0


def test_language_step_is_a_no_op_without_lid_scale(
    tiny_whisper_dir, peft_adapter, tmp_path
):
    folder, _ = peft_adapter
    whisper = merge_shared_adapter(
        Whisper(tiny_whisper_dir, str(tmp_path / "save")), folder, scale=0.5
    )
    before = {k: v.clone() for k, v in whisper.model.state_dict().items()}
    with language_step_weights(whisper):
        inside = whisper.model.state_dict()
        assert all(torch.equal(inside[k], before[k]) for k in before)
    # Equal to the merged scale: nothing to swap, nothing kept.
    same = merge_shared_adapter(
        Whisper(tiny_whisper_dir, str(tmp_path / "same")),
        folder,
        scale=0.5,
        lid_scale=0.5,
    )
    assert same.shared_lid_weights == {}
    with pytest.raises(ValueError, match="shared_adapter_lid_scale"):
        merge_shared_adapter(
            Whisper(tiny_whisper_dir, str(tmp_path / "bad")),
            folder,
            lid_scale=0.0,
        )
