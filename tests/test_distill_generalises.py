"""Distillation that generalises: base anchor, multilingual teacher, init.

The loss terms against hand computations; the student's initialisation
from a PEFT folder (exact copy, clear refusal of another shape, a resumed
checkpoint wins); the Brain's frozen passes; tiny recipe runs on
``tests/samples`` whose teacher slots stay bit-identical while the student
trains, and whose model folder exports the student alone; and a student
that only gets worse, which ends where it started.
"""

import ast
import glob
import json
import multiprocessing
import os
import runpy
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from test_distill import make_batch, record_calls

from speechbrain_lora_experts.attach import WhisperLoRAExperts
from speechbrain_lora_experts.distill import (
    MULTILINGUAL_TEACHER,
    STUDENT,
    check_distill_options,
    distillation_kl,
    distillation_loss,
    mix_teacher_log_probs,
    prepare_distill_pool,
)
from speechbrain_lora_experts.peft_io import (
    AdapterError,
    attach_from_adapters,
    read_adapter,
    save_expert,
)
from speechbrain_lora_experts.recipe_runner import load_recipe_script

SCRIPT = load_recipe_script()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_stage():
    import speechbrain as sb

    return sb.Stage.TRAIN


# The loss -----------------------------------------------------------------
def hand_kl(student, teacher_probs, mask, t):
    """``T^2 * mean over masked tokens of sum p (log p - log q)``."""
    q = torch.log_softmax(student / t, -1)
    per_token = (teacher_probs * (teacher_probs.log() - q)).sum(-1)
    return t * t * (per_token * mask).sum() / mask.sum()


def logits_and_mask(seed=0):
    g = torch.Generator().manual_seed(seed)
    student, teacher, base, multi = (
        torch.randn(2, 4, 7, generator=g) for _ in range(4)
    )
    targets = torch.randint(7, (2, 4), generator=g)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    return student, teacher, base, multi, targets, mask


def test_anchored_loss_is_the_hand_computed_sum():
    student, teacher, base, _, targets, mask = logits_and_mask()
    student.requires_grad_(True)
    base.requires_grad_(True)
    lam, mu, t = 0.3, 0.7, 2.0
    loss, ce, kl = distillation_loss(
        student,
        teacher,
        targets,
        mask,
        weight=lam,
        temperature=t,
        anchor_logits=base,
        anchor_weight=mu,
    )
    per_token_ce = -torch.log_softmax(student, -1).gather(
        -1, targets.unsqueeze(-1)
    )[..., 0]
    hand_ce = (per_token_ce * mask).sum() / mask.sum()
    hand_teacher = hand_kl(student, torch.softmax(teacher / t, -1), mask, t)
    hand_base = hand_kl(student, torch.softmax(base / t, -1), mask, t)
    torch.testing.assert_close(ce, hand_ce)
    torch.testing.assert_close(kl, hand_teacher)
    torch.testing.assert_close(
        loss, (1 - lam) * hand_ce + lam * hand_teacher + mu * hand_base
    )
    assert hand_base.item() > 0.1  # the anchor term is not negligible here
    loss.backward()
    assert base.grad is None  # the base is a constant target
    # mu = 0 is today's loss, whatever base logits are passed.
    plain, _, _ = distillation_loss(
        student, teacher, targets, mask, weight=lam, temperature=t
    )
    ignored, _, _ = distillation_loss(
        student,
        teacher,
        targets,
        mask,
        weight=lam,
        temperature=t,
        anchor_logits=base,
        anchor_weight=0.0,
    )
    assert torch.equal(plain, ignored)
    with pytest.raises(ValueError, match="needs anchor_logits"):
        distillation_loss(student, teacher, targets, mask, anchor_weight=0.1)


def test_anchor_kl_is_zero_when_the_student_is_the_base():
    student, teacher, _, _, targets, mask = logits_and_mask(1)
    assert distillation_kl(student, student.clone(), mask, 2.0).abs() < 1e-6
    free, _, _ = distillation_loss(student, teacher, targets, mask)
    anchored, _, _ = distillation_loss(
        student,
        teacher,
        targets,
        mask,
        anchor_logits=student.clone(),
        anchor_weight=5.0,
    )
    assert abs(anchored.item() - free.item()) < 1e-5


def test_teacher_mix_is_the_hand_computed_probability_mix():
    student, expert, _, multi, targets, mask = logits_and_mask(2)
    beta, t = 0.4, 1.5
    hand = (1 - beta) * torch.softmax(expert / t, -1) + beta * torch.softmax(
        multi / t, -1
    )
    mixed = mix_teacher_log_probs(expert, multi, weight=beta, temperature=t)
    torch.testing.assert_close(mixed.exp(), hand)
    torch.testing.assert_close(mixed.exp().sum(-1), torch.ones(2, 4))
    loss, ce, kl = distillation_loss(
        student,
        expert,
        targets,
        mask,
        weight=0.6,
        temperature=t,
        multilingual_logits=multi,
        multilingual_weight=beta,
    )
    torch.testing.assert_close(kl, hand_kl(student, hand, mask, t))
    torch.testing.assert_close(loss, 0.4 * ce + 0.6 * kl)
    # beta = 0 is the expert teacher exactly, beta = 1 the multilingual one.
    assert torch.equal(
        mix_teacher_log_probs(expert, multi, 0.0, t),
        torch.log_softmax(expert / t, -1),
    )
    only_expert = distillation_loss(
        student, expert, targets, mask, temperature=t
    )
    beta_zero = distillation_loss(
        student,
        expert,
        targets,
        mask,
        temperature=t,
        multilingual_logits=multi,
        multilingual_weight=0.0,
    )
    assert all(torch.equal(a, b) for a, b in zip(only_expert, beta_zero))
    torch.testing.assert_close(
        mix_teacher_log_probs(expert, multi, 1.0, t).exp(),
        torch.softmax(multi / t, -1),
    )


@pytest.mark.parametrize(
    "options, name",
    [
        (dict(weight=1.5), "distill_weight"),
        (dict(weight=-0.1), "distill_weight"),
        (dict(anchor_weight=-0.5), "distill_anchor_weight"),
        (dict(anchor_weight=float("inf")), "distill_anchor_weight"),
        (dict(multilingual_weight=1.2), "multilingual_teacher_weight"),
        (dict(multilingual_weight=float("nan")), "multilingual_teacher"),
        (dict(temperature=0.0), "distill_temperature"),
        (dict(weight=True), "distill_weight"),
    ],
)
def test_out_of_range_options_fail_naming_the_hparam(options, name):
    with pytest.raises(ValueError, match=name):
        check_distill_options(**options)
    # The recipe checks the yaml's values before preparing any data.
    hparams = {
        "distill_weight": 0.5,
        "distill_anchor_weight": 0.0,
        "multilingual_teacher_weight": 0.5,
    }
    key = {
        "weight": "distill_weight",
        "anchor_weight": "distill_anchor_weight",
        "multilingual_weight": "multilingual_teacher_weight",
        "temperature": "distill_temperature",
    }
    for option, value in options.items():
        hparams[key[option]] = value
    with pytest.raises(ValueError, match=name):
        check_distill_options(**SCRIPT.distill_options(hparams))
    check_distill_options(weight=0, anchor_weight=0, multilingual_weight=1)


# The pool -----------------------------------------------------------------
def randomise(experts, seed, names=None):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in names or experts.expert_names:
            for p in experts.expert_parameters(name):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def write_adapter(tiny_whisper_dir, folder, seed, **shape):
    """A PEFT folder of random weights (rank 4, alpha 8 unless told)."""
    from speechbrain_lora_experts.whisper import Whisper

    whisper = Whisper(tiny_whisper_dir, str(folder) + "_whisper")
    shape = {"rank": 4, "alpha": 8, **shape}
    pool = WhisperLoRAExperts(whisper, expert_names=["x"], **shape)
    randomise(pool, seed)
    return save_expert(pool, "x", str(folder))


def test_student_init_copies_the_adapter_exactly(
    sb_whisper, tiny_whisper_dir, tmp_path
):
    folder = write_adapter(tiny_whisper_dir, tmp_path / "init", seed=3)
    pool = WhisperLoRAExperts(
        sb_whisper, expert_names=["de", "es", STUDENT], rank=4, alpha=8
    )
    prepare_distill_pool(pool, student_init=folder)
    adapter = read_adapter(folder)
    assert sorted(adapter.weights) == sorted(pool.layers)
    for name, layer in pool.layers.items():
        slot = layer.experts[pool.index_of(STUDENT)]
        lora_a, lora_b = adapter.weights[name]
        assert torch.equal(slot.lora_A, lora_a)
        assert torch.equal(slot.lora_B, lora_b)
        assert slot.alpha == 8 and slot.rank == 4
        assert lora_b.abs().sum() > 0
    assert all(p.requires_grad for p in pool.expert_parameters(STUDENT))
    assert not any(p.requires_grad for p in pool.expert_parameters("de"))


@pytest.mark.parametrize(
    "shape, says",
    [
        (dict(rank=2), "lora rank 2 where the student has 4"),
        (dict(alpha=16), "lora alpha 16 where the student has 8"),
        (dict(targets=["q_proj"]), "does not adapt student layers"),
    ],
)
def test_student_init_of_another_shape_is_refused(
    sb_whisper, tiny_whisper_dir, tmp_path, shape, says
):
    folder = write_adapter(
        tiny_whisper_dir, tmp_path / "other", seed=4, **shape
    )
    pool = WhisperLoRAExperts(
        sb_whisper, expert_names=["de", STUDENT], rank=4, alpha=8
    )
    before = [p.clone() for p in pool.expert_parameters(STUDENT)]
    with pytest.raises(AdapterError) as error:
        prepare_distill_pool(pool, student_init=folder)
    message = str(error.value)
    assert f"student_init {folder} does not match the student" in message
    assert says in message
    assert "lora_rank, lora_alpha, lora_targets and lora_layers" in message
    after = pool.expert_parameters(STUDENT)
    assert all(torch.equal(a, b) for a, b in zip(before, after))


def test_a_multilingual_teacher_of_another_rank_is_refused(
    sb_whisper, tiny_whisper_dir, tmp_path
):
    folder = write_adapter(tiny_whisper_dir, tmp_path / "ml", seed=8, rank=2)
    names = ["de", STUDENT, MULTILINGUAL_TEACHER]
    pool = WhisperLoRAExperts(sb_whisper, expert_names=names, rank=4)
    with pytest.raises(AdapterError) as error:
        prepare_distill_pool(pool, multilingual_teacher=folder)
    message = str(error.value)
    assert message.startswith(f"multilingual_teacher: adapter {folder}")
    assert "rank 2" in message and "lora_rank" in message
    assert "trained with the experts' lora_rank" in message
    from speechbrain_lora_experts.whisper import Whisper

    other = Whisper(tiny_whisper_dir, str(tmp_path / "other"))
    no_slot = WhisperLoRAExperts(other, expert_names=["de", STUDENT])
    with pytest.raises(ValueError, match="needs a 'multilingual_teacher' slot"):
        prepare_distill_pool(no_slot, multilingual_teacher=folder)


def test_the_merged_shared_adapter_is_refused_and_another_base_warns(
    sb_whisper, tiny_whisper_dir, tmp_path, caplog
):
    folder = write_adapter(tiny_whisper_dir, tmp_path / "shared", seed=7)
    pool = WhisperLoRAExperts(
        sb_whisper, expert_names=["de", STUDENT], rank=4, alpha=8
    )
    with pytest.raises(AdapterError, match="would count twice"):
        prepare_distill_pool(pool, student_init=folder, shared_adapter=folder)
    with caplog.at_level("WARNING", logger="speechbrain_lora_experts"):
        prepare_distill_pool(
            pool, student_init=folder, shared_adapter=str(tmp_path / "other")
        )
    assert "lands on another base" in caplog.text


def test_a_resumed_checkpoint_wins_over_student_init(
    tiny_whisper_dir, tmp_path
):
    """``attach_experts`` loads the init; recovery (``on_fit_start``) after."""
    from speechbrain.utils.checkpoints import Checkpointer
    from speechbrain_lora_experts.whisper import Whisper

    def hparams(save):
        return {
            "system": "distill",
            "languages": ["de", "es"],
            "extra_experts": [STUDENT],
            "untrained_experts": True,
            "lora_rank": 4,
            "lora_alpha": 8,
            "lora_dropout": 0.0,
            "lora_targets": ["q_proj", "v_proj", "fc1", "fc2"],
            "lora_parts": ["encoder", "decoder"],
            "lora_layers": None,
            "whisper": Whisper(tiny_whisper_dir, str(tmp_path / save)),
            "checkpointer": Checkpointer(str(tmp_path / "ckpt")),
            "student_init": init,
        }

    init = write_adapter(tiny_whisper_dir, tmp_path / "init", seed=5)
    first = hparams("w1")
    experts = SCRIPT.attach_experts(first)
    randomise(experts, seed=6, names=[STUDENT])  # "training"
    first["checkpointer"].save_checkpoint()
    resumed = hparams("w2")
    again = SCRIPT.attach_experts(resumed)
    loaded = read_adapter(init)
    name = next(iter(again.layers))
    slot = again.layers[name].experts[again.index_of(STUDENT)]
    assert torch.equal(slot.lora_B, loaded.weights[name][1])  # init first
    resumed["checkpointer"].recover_if_possible()
    for ours, theirs in zip(
        again.expert_parameters(STUDENT), experts.expert_parameters(STUDENT)
    ):
        assert torch.equal(ours, theirs)
    assert not torch.equal(slot.lora_B, loaded.weights[name][1])


# The Brain ----------------------------------------------------------------
def make_brain(sb_whisper, parts=("encoder", "decoder"), **hparams):
    names = ["de", "es", STUDENT, MULTILINGUAL_TEACHER]
    experts = WhisperLoRAExperts(
        sb_whisper, expert_names=names, rank=4, parts=parts
    )
    randomise(experts, seed=0)
    experts.set_trainable([STUDENT])
    brain = object.__new__(SCRIPT.DistillBrain)
    brain.hparams = SimpleNamespace(
        whisper=sb_whisper, experts=experts, **hparams
    )
    brain.device = "cpu"
    return brain, experts


def reference_logits(sb_whisper, experts, batch, **scope):
    sb_whisper.eval()
    mel = sb_whisper._get_mel(batch.sig[0])
    with experts.scope(**scope), torch.no_grad():
        enc = sb_whisper.forward_encoder(mel)
        return sb_whisper.forward_decoder(
            enc, batch.tokens_bos[0], use_cache=False
        )[0]


def test_base_and_multilingual_passes_are_frozen_and_exact(sb_whisper):
    brain, experts = make_brain(
        sb_whisper, distill_anchor_weight=0.5, multilingual_teacher_weight=0.3
    )
    sb_whisper.train()
    batch = make_batch()
    calls, hooks = record_calls(sb_whisper, experts)
    try:
        out = brain.compute_forward(batch, train_stage())
    finally:
        for h in hooks:
            h.remove()
    # The experts adapt the encoder: one encoder pass per model.
    frozen, student = calls[:6], calls[6:]
    assert [c["part"] for c in calls] == ["enc", "dec"] * 4
    assert all(not c["training"] and not c["grad"] for c in frozen)
    assert [c["mode"] for c in frozen[::2]] == ["route", "route", "off"]
    assert frozen[2]["uniform"] == 3  # the multilingual teacher's slot
    assert all(c["training"] and c["grad"] for c in student)
    assert sb_whisper.training and experts.routing.mode == "off"
    for key, scope in [
        ("teacher_logits", dict(route=["de", "es"])),
        ("multilingual_logits", dict(route=MULTILINGUAL_TEACHER)),
        ("base_logits", {}),
    ]:
        assert not out[key].requires_grad
        torch.testing.assert_close(
            out[key],
            reference_logits(sb_whisper, experts, batch, **scope),
            atol=1e-5,
            rtol=1e-5,
        )
    assert not torch.allclose(out["base_logits"], out["teacher_logits"])


def test_decoder_only_experts_share_one_encoder_pass(sb_whisper):
    brain, experts = make_brain(
        sb_whisper,
        parts=["decoder"],
        distill_anchor_weight=0.5,
        multilingual_teacher_weight=0.5,
    )
    batch = make_batch()
    calls, hooks = record_calls(sb_whisper, experts)
    try:
        out = brain.compute_forward(batch, train_stage())
    finally:
        for h in hooks:
            h.remove()
    assert [c["part"] for c in calls] == ["enc"] + ["dec"] * 4
    torch.testing.assert_close(
        out["base_logits"],
        reference_logits(sb_whisper, experts, batch),
        atol=1e-5,
        rtol=1e-5,
    )


def test_weights_of_zero_run_no_extra_pass(sb_whisper):
    brain, experts = make_brain(
        sb_whisper, distill_anchor_weight=0.0, multilingual_teacher_weight=0.0
    )
    calls, hooks = record_calls(sb_whisper, experts)
    try:
        out = brain.compute_forward(make_batch(), train_stage())
    finally:
        for h in hooks:
            h.remove()
    assert len(calls) == 4  # teacher and student, as without the options
    assert set(out) == {"logits", "teacher_logits"}


def test_a_failed_base_pass_restores_mode_and_routing(sb_whisper):
    brain, experts = make_brain(sb_whisper, distill_anchor_weight=1.0)
    sb_whisper.train()

    decoders = []

    def third_decoder(call):
        decoders.extend([call] if call["part"] == "dec" else [])
        return len(decoders) == 3

    calls, hooks = record_calls(sb_whisper, experts, fail_on=third_decoder)
    try:
        with pytest.raises(RuntimeError, match="simulated"):
            brain.compute_forward(make_batch(), train_stage())
    finally:
        for h in hooks:
            h.remove()
    assert calls[-1]["mode"] == "off" and not calls[-1]["grad"]
    assert sb_whisper.training
    assert experts.routing.mode == "off"
    assert not experts.routing.lock._is_owned()


def test_the_multilingual_teacher_is_left_out_of_the_optimiser(sb_whisper):
    names = ["de", STUDENT, MULTILINGUAL_TEACHER]
    experts = WhisperLoRAExperts(sb_whisper, expert_names=names, rank=4)
    prepare_distill_pool(experts)
    brain = SCRIPT.DistillBrain(
        modules={"whisper": sb_whisper},
        opt_class=lambda params: torch.optim.AdamW(params, lr=1e-3),
        hparams={
            "whisper": sb_whisper,
            "experts": experts,
            "distill_weight": 0.5,
            "distill_temperature": 2.0,
            "multilingual_teacher": "some/folder",
        },
        run_opts={"device": "cpu"},
    )
    brain.init_optimizers()
    in_optimiser = {
        id(p) for g in brain.optimizer.param_groups for p in g["params"]
    }
    for p in experts.expert_parameters(MULTILINGUAL_TEACHER):
        assert id(p) not in in_optimiser and not p.requires_grad
    for p in experts.expert_parameters(STUDENT):
        assert id(p) in in_optimiser and p.requires_grad
    with pytest.raises(ValueError, match="distill_anchor_weight"):
        SCRIPT.DistillBrain(
            modules={"whisper": sb_whisper},
            hparams={
                "whisper": sb_whisper,
                "experts": experts,
                "distill_weight": 0.5,
                "distill_temperature": 2.0,
                "distill_anchor_weight": -1,
            },
            run_opts={"device": "cpu"},
        )


# Tiny recipe runs -----------------------------------------------------------
@pytest.fixture(scope="module")
def folders(tiny_whisper_dir, tmp_path_factory):
    """An expert pool (de, es), a multilingual LoRA and a student init."""
    root = tmp_path_factory.mktemp("distill_folders")
    pool = root / "pool"
    for seed, lang in enumerate(["de", "es"]):
        write_adapter(tiny_whisper_dir, pool / lang, seed=10 + seed)
        meta = pool / lang / "lora_experts.json"
        info = json.loads(meta.read_text())
        meta.write_text(json.dumps(dict(info, language=lang)))
    return {
        "root": root,
        "pool": str(pool),
        "multilingual": write_adapter(
            tiny_whisper_dir, root / "multilingual", seed=20
        ),
        "init": write_adapter(tiny_whisper_dir, root / "init", seed=21),
    }


RECIPE = os.path.join(ROOT, "recipes", "CommonVoice", "ASR", "lora_experts")


def run_distill(tiny_whisper_dir, folders, name, *flags):
    """``train.py hparams/distill.yaml`` on the samples, one short epoch."""
    code, log = launch(tiny_whisper_dir, folders, name, *flags)
    assert code == 0, log[-4000:]
    return folders["root"] / name


def launch(tiny_whisper_dir, folders, name, *flags):
    """Runs the recipe; returns its exit code and output."""
    samples = "tests/samples/annotation"
    argv = [
        os.path.join(RECIPE, "train.py"),
        os.path.join(RECIPE, "hparams", "distill.yaml"),
        "--data_folder=tests/samples/ASR",
        f"--train_csv={samples}/lora_experts_train.csv",
        f"--valid_csv={samples}/lora_experts_dev.csv",
        f"--test_csv={samples}/lora_experts_dev.csv",
        "--skip_prep=True",
        "--languages=[de,es]",
        "--number_of_epochs=1",
        "--batch_size=4",
        "--lr=0.003",
        "--encoder_window_s=5.0",
        "--valid_search_interval=0",
        f"--expert_pool={folders['pool']}",
        f"--whisper_hub={tiny_whisper_dir}",
        f"--whisper_save_folder={folders['root'] / 'hub_cache'}",
        f"--output_folder={folders['root'] / name}",
        "--device=cpu",
        "--precision=fp32",
    ]
    # A flag given replaces the default of the same name.
    given = {flag.split("=", 1)[0] for flag in flags}
    argv = [a for a in argv if a.split("=", 1)[0] not in given] + list(flags)
    log = folders["root"] / f"{name}.out"
    if "fork" in multiprocessing.get_all_start_methods():
        # A fork of this process has torch, SpeechBrain and transformers
        # imported already: ~10 s of CPU less than a fresh interpreter.
        child = multiprocessing.get_context("fork").Process(
            target=_run_script, args=(argv, str(log))
        )
        child.start()
        child.join(600)
        if child.exitcode is None:
            child.kill()
            child.join()
        code = child.exitcode
    else:
        with open(log, "w") as f:
            code = subprocess.run(
                [sys.executable, *argv],
                cwd=ROOT,
                stdout=f,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": RECIPE},
                timeout=600,
            ).returncode
    return code, log.read_text()


def _run_script(argv, log):
    """The recipe as ``python train.py ...`` runs it (in a forked child)."""
    # Left open: a failure's traceback is written there after this returns.
    out = open(log, "w")
    os.dup2(out.fileno(), 1)
    os.dup2(out.fileno(), 2)
    sys.stdout = sys.stderr = out
    os.chdir(ROOT)
    sys.path.insert(0, RECIPE)
    sys.argv = argv
    runpy.run_path(argv[0], run_name="__main__")
    out.flush()


def trained_pool(tiny_whisper_dir, folders, out, extra):
    """The run's pool as its checkpoint holds it."""
    from speechbrain_lora_experts.whisper import Whisper

    (ckpt,) = glob.glob(str(out / "save" / "CKPT*" / "experts.ckpt"))
    whisper = Whisper(tiny_whisper_dir, str(out / "check_whisper"))
    pool = attach_from_adapters(
        whisper,
        [os.path.join(folders["pool"], lang) for lang in ("de", "es")],
        names=["de", "es"],
        extra_experts=extra,
    )
    pool.load_state_dict(torch.load(ckpt, map_location="cpu"))
    return pool


def assert_slot_is(pool, slot, folder):
    adapter = read_adapter(folder)
    for name, layer in pool.layers.items():
        lora = layer.experts[pool.index_of(slot)]
        assert torch.equal(lora.lora_A, adapter.weights[name][0]), name
        assert torch.equal(lora.lora_B, adapter.weights[name][1]), name


def assert_only_the_student_trained(out):
    """The run's parameter report: the student's weights alone train."""
    line = next(
        line
        for line in (out / "log.txt").read_text().splitlines()
        if "expert pool: {" in line
    )
    report = ast.literal_eval(line.split("expert pool: ", 1)[1])
    assert report["trainable"] == report["per_expert"][2]  # de, es, student


def assert_exports_the_student_alone(pool, out):
    model = out / "model"
    info = json.loads((model / "model.json").read_text())
    assert info["system"] == "distill" and info["experts"] == [STUDENT]
    assert os.listdir(model / "experts") == [STUDENT]
    assert MULTILINGUAL_TEACHER not in (model / "model.json").read_text()
    assert_slot_is(pool, STUDENT, model / "experts" / STUDENT)


def test_anchored_run_trains_the_student_only(tiny_whisper_dir, folders):
    out = run_distill(
        tiny_whisper_dir, folders, "anchor", "--distill_anchor_weight=0.5"
    )
    pool = trained_pool(tiny_whisper_dir, folders, out, [STUDENT])
    assert pool.expert_names == ["de", "es", STUDENT]
    for lang in ("de", "es"):
        assert_slot_is(pool, lang, os.path.join(folders["pool"], lang))
    # The student starts with B = 0 and moved.
    student = pool.index_of(STUDENT)
    assert all(
        layer.experts[student].lora_B.abs().sum() > 0
        for layer in pool.layers.values()
    )
    assert_only_the_student_trained(out)
    assert_exports_the_student_alone(pool, out)
    run = json.loads((out / "run.json").read_text())
    assert run["optimizer_steps"] == 2  # 8 clips, batch 4, 1 epoch


@pytest.mark.parametrize(
    "name, teacher",
    [
        ("multilingual", ()),
        # The expert soups teach instead (one weight-space pass each).
        (
            "soup",
            ("--teacher_soup=[0.65,0.5]", "--multilingual_teacher_weight=0"),
        ),
    ],
)
def test_multilingual_teacher_run_keeps_the_teacher_and_exports_no_teacher(
    tiny_whisper_dir, folders, tmp_path, name, teacher
):
    from speechbrain_lora_experts.inference import LoRAExpertsASR

    out = run_distill(
        tiny_whisper_dir,
        folders,
        name,
        f"--multilingual_teacher={folders['multilingual']}",
        f"--student_init={folders['init']}",
        # One checkpoint, the trained one (the start's has its own test).
        "--validate_before_training=False",
        *teacher,
    )
    extra = [STUDENT, MULTILINGUAL_TEACHER]
    pool = trained_pool(tiny_whisper_dir, folders, out, extra)
    for lang in ("de", "es"):
        assert_slot_is(pool, lang, os.path.join(folders["pool"], lang))
    assert_slot_is(pool, MULTILINGUAL_TEACHER, folders["multilingual"])
    # The student started at student_init (2 Adam steps of lr 0.003 move
    # a weight by about 0.006 at most) and moved away from it.
    init = read_adapter(folders["init"])
    student = pool.index_of(STUDENT)
    moved = []
    for name, layer in pool.layers.items():
        change = layer.experts[student].lora_B - init.weights[name][1]
        assert change.abs().max() < 0.02, name
        moved.append(change.abs().max().item())
    assert max(moved) > 1e-4
    assert_only_the_student_trained(out)
    assert_exports_the_student_alone(pool, out)
    asr = LoRAExpertsASR.from_hparams(
        source=str(out / "model"), savedir=str(tmp_path / "savedir")
    )
    assert asr.experts.expert_names == [STUDENT]
    assert_slot_is(asr.experts, STUDENT, out / "model" / "experts" / STUDENT)


@pytest.mark.parametrize(
    "name, flag, message",
    [
        (
            "bad",
            "--multilingual_teacher_weight=1.5",
            "multilingual_teacher_weight (beta) must be in [0, 1]",
        ),
        # A soup teacher without the multilingual LoRA it mixes in.
        (
            "no_soup",
            "--teacher_soup=[0.5,0.5]",
            "teacher_soup mixes in the multilingual LoRA",
        ),
    ],
)
def test_the_recipe_refuses_bad_weights_before_preparing_data(
    tiny_whisper_dir, folders, name, flag, message
):
    code, log = launch(tiny_whisper_dir, folders, name, flag)
    assert code != 0
    assert message in log
    # Refused before the experiment folder and the data preparation.
    assert os.listdir(folders["root"] / name) == ["save"]  # the yaml's


def test_a_student_that_gets_worse_ends_at_its_start(tiny_whisper_dir, folders):
    """With student_init the start is epoch 0: training must beat it."""
    flags = (
        f"--student_init={folders['init']}",
        "--lr=1.0",  # Adam steps of 1.0 wreck the student
        "--number_of_epochs=3",
        "--patience=1",
    )
    out = run_distill(tiny_whisper_dir, folders, "worse", *flags)
    curve = json.loads((out / "dev_curve.json").read_text())
    assert [point["epoch"] for point in curve] == [0, 1]
    assert curve[1]["loss"] > curve[0]["loss"]
    run = json.loads((out / "run.json").read_text())
    assert run["stopped_early"] is True
    # The test and the export use the best checkpoint: the start's.
    exported = read_adapter(out / "model" / "experts" / STUDENT)
    init = read_adapter(folders["init"])
    assert exported.weights.keys() == init.weights.keys()
    for name, (lora_a, lora_b) in init.weights.items():
        assert torch.equal(exported.weights[name][0], lora_a), name
        assert torch.equal(exported.weights[name][1], lora_b), name
    # Run again: it resumes from the checkpoints (no second epoch 0).
    run_distill(tiny_whisper_dir, folders, "worse", *flags)
    log = (out / "log.txt").read_text()
    assert log.count("validating the starting point as epoch 0") == 1
    again = json.loads((out / "dev_curve.json").read_text())
    assert [point["epoch"] for point in again] == [0, 1]


def test_soup_teacher_is_the_weight_space_soup_of_its_language(sb_whisper):
    brain, experts = make_brain(
        sb_whisper, multilingual_teacher_weight=0.0, teacher_soup=[0.65, 0.5]
    )
    batch = make_batch()
    out = brain.compute_forward(batch, train_stage())
    assert set(out) == {"logits", "teacher_logits"}
    assert experts.routing.mode == "off"
    # Each utterance's soup merged into the weights by hand:
    # W + 0.65 dW_multilingual + 0.5 dW_language.
    names = experts.expert_names
    soups = []
    for row, lang in enumerate(["de", "es"]):
        mix = torch.tensor(
            [
                {lang: 0.5, MULTILINGUAL_TEACHER: 0.65}.get(name, 0.0)
                for name in names
            ]
        )
        one = SimpleNamespace(
            sig=(batch.sig[0][row : row + 1], None),
            tokens_bos=(batch.tokens_bos[0][row : row + 1], None),
        )
        saved = {}
        with torch.no_grad():
            for name, layer in experts.layers.items():
                saved[name] = layer.base.weight.clone()
                layer.base.weight += layer.delta_weight(weights=mix)
        try:
            soups.append(reference_logits(sb_whisper, experts, one))
        finally:
            with torch.no_grad():
                for name, layer in experts.layers.items():
                    layer.base.weight.copy_(saved[name])
    torch.testing.assert_close(
        out["teacher_logits"], torch.cat(soups), atol=1e-4, rtol=1e-4
    )
    expert_only = reference_logits(
        sb_whisper, experts, batch, route=["de", "es"]
    )
    assert not torch.allclose(out["teacher_logits"], expert_only, atol=1e-3)
