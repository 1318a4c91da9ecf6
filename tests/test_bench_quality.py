"""bench/quality.py and its helpers: per-utterance errors, bootstrap
intervals with known answers, step budgets, run references, and a report
collected from fabricated run folders with known error rates.

Authors
 * speechbrain-lora-experts developers 2026
"""

import io
import json
import os
import sys
import tarfile

import numpy as np
import pytest
import soundfile as sf

from speechbrain.utils.train_logger import FileTrainLogger
from speechbrain_lora_experts.metrics import MultilingualScorer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import bootstrap  # noqa: E402
import quality  # noqa: E402


def _write_run(
    folder, utterances, prefix="", epochs=(), n_train=0, start_dev=None
):
    """A recipe run's outputs: metrics and wer files written by the
    package's scorer, SpeechBrain's train log, the prepared train CSV.

    ``utterances``: (id, language, hypothesis, reference) tuples;
    ``start_dev``: the dev loss of a validated start (epoch 0).
    """
    scorer = MultilingualScorer()
    for uid, lang, hyp, ref in utterances:
        scorer.append([uid], [lang], [hyp], [ref])
    summary = scorer.write(str(folder), prefix=prefix)
    if epochs:
        logger = FileTrainLogger(str(folder / "train_log.txt"))
        if start_dev is not None:
            logger.log_stats(
                {"epoch": 0, "lr": 1e-3},
                valid_stats={"loss": start_dev},
                verbose=False,
            )
        for epoch, (train, dev) in enumerate(epochs, start=1):
            logger.log_stats(
                {"epoch": epoch, "lr": 1e-3},
                train_stats={"loss": train},
                valid_stats={"loss": dev},
                verbose=False,
            )
    # The recipe exports its model after its last test.
    os.makedirs(folder / "model", exist_ok=True)
    (folder / "model" / "model.json").write_text("{}")
    if n_train:
        os.makedirs(folder / "data", exist_ok=True)
        rows = [f"u{i},1.0,x.wav,s,w,de" for i in range(n_train)]
        (folder / "data" / "train.csv").write_text(
            "ID,duration,wav,spk_id,wrd,lang\n" + "\n".join(rows) + "\n"
        )
    return summary


def test_alignments_read_back_what_the_scorer_wrote(tmp_path):
    summary = _write_run(
        tmp_path,
        [
            ("de1", "de", "guten tag", "Guten Tag!"),
            ("de2", "de", "wie geht es dir", "Wie geht es?"),
            ("de3", "de", "", "Danke schön."),
            ("zh1", "zh", "你好世间", "你好，世界。"),
        ],
    )
    run = bootstrap.read_run(str(tmp_path))
    assert run["de"] == {
        "de1": (0, 2, ("guten", "tag")),
        "de2": (1, 3, ("wie", "geht", "es")),  # one insertion
        "de3": (2, 2, ("danke", "schön")),  # two deletions
    }
    assert run["zh"]["zh1"][:2] == (1, 4)  # CER: characters
    rates, macro = bootstrap.error_rates(run)
    for lang, rate in rates.items():
        assert rate == pytest.approx(
            summary["per_language"][lang]["error_rate"]
        )
    assert macro == pytest.approx(summary["macro"])
    # Another prefix's files belong to another test set.
    _write_run(tmp_path, [("x", "de", "a", "a b")], prefix="fleurs_")
    assert bootstrap.read_run(str(tmp_path), "fleurs_")["de"] == {
        "x": (1, 2, ("a", "b"))
    }
    assert set(bootstrap.read_run(str(tmp_path))["de"]) == {"de1", "de2", "de3"}


def _run(errors, units=1, lang="de", tokens=None):
    return {
        lang: {
            f"u{i:03d}": (e, units, tokens(i) if tokens else (f"s{i}",))
            for i, e in enumerate(errors)
        }
    }


def test_bootstrap_interval_of_a_rate_matches_the_binomial():
    # 100 one-word utterances, 30 wrong: resampled WER ~ Binomial(100,
    # 0.3), 95% interval 30 +- 1.96 * sqrt(0.3 * 0.7 / 100) = [21.0, 39.0].
    run = _run([1] * 30 + [0] * 70)
    boot = bootstrap.Bootstrap([run], n_resamples=4000, seed=1)
    assert bootstrap.error_rates(run)[1] == 30.0
    low, high = boot.interval(boot.macro([run]))
    assert 20.0 <= low <= 22.0 and 38.0 <= high <= 40.0
    assert boot.sizes() == {"de": {"utterances": 100, "sentences": 100}}


def test_repeated_sentences_resample_together():
    # 50 sentences read twice with the same outcome: 50 independent
    # draws, not 100, so the interval is sqrt(2) wider.
    errors = [1] * 30 + [0] * 70
    twice = _run(errors, tokens=lambda i: (f"s{i // 2}",))
    boot = bootstrap.Bootstrap([twice], n_resamples=4000, seed=1)
    flat = bootstrap.Bootstrap(
        [twice], n_resamples=4000, seed=1, by_sentence=False
    )
    assert boot.sizes()["de"] == {"utterances": 100, "sentences": 50}
    width = np.subtract(*boot.interval(boot.macro([twice]))[::-1])
    flat_width = np.subtract(*flat.interval(flat.macro([twice]))[::-1])
    assert 1.25 < width / flat_width < 1.6


def test_paired_gain_interval():
    # 200 one-word utterances: the baseline gets 100 wrong, the system
    # fixes 10 of them: gain 10%. Per resample the gain is (fixed drawn) /
    # (baseline errors drawn), about 10 +- 3.1%: the 95% interval is near
    # [4, 16] and excludes 0.
    base = [1, 0] * 100
    system = list(base)
    for i in range(0, 40, 4):
        system[i] = 0
    base_run, system_run = _run(base), _run(system)
    boot = bootstrap.Bootstrap([base_run, system_run], n_resamples=4000)
    samples = boot.paired_gain([system_run], [base_run])
    low, high = boot.interval(samples)
    assert 3.0 < low < 6.0 and 14.0 < high < 17.0
    assert boot.share_at_most(samples, 0.0) < 0.01
    # Seeds average before the gain: a second, equal pair changes nothing.
    again = boot.paired_gain([system_run] * 2, [base_run] * 2)
    np.testing.assert_allclose(again, samples)


def test_bootstrap_keeps_only_utterances_every_run_has():
    a = _run([1, 0, 1])
    b = _run([0, 0])
    boot = bootstrap.Bootstrap([a, b], n_resamples=10)
    assert boot.uids == {"de": ["u000", "u001"]} and boot.dropped == {"de": 1}


def _planned(tmp_path, system):
    """The planned aware seed-1 run of ``system``."""
    tasks = quality.plan_runs(_args(tmp_path, systems=system))
    return tasks[("system", system, "aware", 1)]


def _added(overrides, base):
    """The overrides that differ from ``base`` (the run folder aside)."""
    return {
        k: v
        for k, v in overrides.items()
        if base.get(k) != v and k != "output_folder"
    }


def _args(tmp_path, **extra):
    args = quality.parse_args(
        [
            "--whisper=openai/whisper-base",
            f"--cv={tmp_path}",
            f"--work={tmp_path / 'work'}",
            "--languages=de,it",
            "--seeds=1",
            "--scenarios=aware",
            "--max_steps=120",
        ]
        + [f"--{k}={v}" for k, v in extra.items()]
    )
    args.ood = None
    args.train_clips = {"de": 40, "it": 38}
    return args


def test_step_budget_gives_experts_more_epochs(tmp_path):
    args = _args(tmp_path, systems="multilingual_lora,expert_oracle")
    tasks = quality.plan_runs(args)
    ml = tasks[("system", "multilingual_lora", "aware", 1)]
    # 78 clips, batch 4: 20 steps per epoch -> 6 epochs in 120 steps.
    assert ml["overrides"]["number_of_epochs"] == 6
    de = tasks[("expert", "plain", "de", 1)]["overrides"]
    it = tasks[("expert", "plain", "it", 1)]["overrides"]
    assert (de["number_of_epochs"], it["number_of_epochs"]) == (12, 12)
    oracle = tasks[("system", "expert_oracle", "aware", 1)]
    assert oracle["overrides"]["number_of_epochs"] == 0
    assert oracle["deps"] == {
        ("expert", "plain", "de", 1),
        ("expert", "plain", "it", 1),
    }
    # The dev soup of that longer baseline reads its adapter.
    planned = quality.plan_runs(_args(tmp_path, systems="expert_soup_dev_long"))
    long_soup = planned[("system", "expert_soup_dev_long", "aware", 1)]
    long_key = ("system", "multilingual_lora_long", "aware", 1)
    assert long_key in long_soup["deps"]
    assert long_soup["overrides"]["shared_adapter"] == os.path.join(
        planned[long_key]["out"], "model", "experts", "multilingual"
    )
    # ... and rescored as the agnostic dev soup is: only the adapter moves.
    long_rescored = _planned(tmp_path, "expert_soup_dev_long_rescored")
    rescored = _planned(tmp_path, "expert_soup_dev_rescored")
    assert _added(long_rescored["overrides"], rescored["overrides"]) == {
        "shared_adapter": long_soup["overrides"]["shared_adapter"]
    }
    # Three times the budget: 18 epochs of the same 20 steps.
    long = _planned(tmp_path, "multilingual_lora_long")
    assert long["overrides"]["number_of_epochs"] == 18
    assert _added(long["overrides"], ml["overrides"]) == {
        "number_of_epochs": 18
    }
    fixed = _args(tmp_path, systems="multilingual_lora", epochs=2)
    fixed = quality.plan_runs(fixed)
    assert fixed[("system", "multilingual_lora", "aware", 1)]["epochs"] == 2


def test_systems_reference_other_runs(tmp_path):
    # The shared + expert systems read the multilingual LoRA's adapter: it
    # is planned (though not asked for) and runs before them.
    args = _args(tmp_path, systems="shared_expert_oracle")
    tasks = quality.plan_runs(args)
    ml_key = ("system", "multilingual_lora", "aware", 1)
    ml_out = tasks[ml_key]["out"]
    adapter = os.path.join(ml_out, "model", "experts", "multilingual")
    expert = tasks[("expert", "shared", "de", 1)]
    assert expert["overrides"]["shared_adapter"] == adapter
    # Starts at the shared model exactly: its dev result is epoch 0.
    assert expert["overrides"]["validate_before_training"] is True
    assert expert["deps"] == {ml_key}
    assert expert["out"].endswith(os.path.join("seed1", "shared_expert_de"))
    oracle = tasks[("system", "shared_expert_oracle", "aware", 1)]
    assert oracle["overrides"]["expert_pool"].endswith("pool_shared")
    assert oracle["deps"] == {
        ("expert", "shared", "de", 1),
        ("expert", "shared", "it", 1),
        ml_key,  # its own shared_adapter
    }
    soup = quality.plan_runs(_args(tmp_path, systems="expert_soup"))
    soup = soup[("system", "expert_soup", "aware", 1)]
    assert soup["overrides"]["shared_adapter"] == adapter
    assert soup["overrides"]["expert_pool"].endswith("pool")
    assert (
        soup["overrides"]["shared_adapter_scale"],
        soup["overrides"]["expert_scale"],
        soup["overrides"]["number_of_epochs"],
    ) == (0.5, 0.5, 0)
    # Agnostic, the soup's own base names the language, never the label.
    assert soup["overrides"]["oracle_routing"] == "lid"
    # The dev-tuned soup differs from it in the weights only.
    tuned = quality.plan_runs(_args(tmp_path, systems="expert_soup_dev"))
    tuned = tuned[("system", "expert_soup_dev", "aware", 1)]
    assert tuned["out"].endswith("expert_soup_dev_aware")
    assert tuned["deps"] == soup["deps"]
    changed = {
        k: v for k, v in tuned["overrides"].items() if soup["overrides"][k] != v
    }
    changed = set(changed) - {"output_folder"}
    assert changed and changed <= {"shared_adapter_scale", "expert_scale"}
    # Its agnostic upper bound routes by the true language.
    label = quality.plan_runs(_args(tmp_path, systems="expert_soup_label"))
    label = label[("system", "expert_soup_label", "aware", 1)]["overrides"]
    assert label["oracle_routing"] == "label"
    assert label["shared_adapter_scale"] == label["expert_scale"] == 0.5
    dev_label = quality.plan_runs(
        _args(tmp_path, systems="expert_soup_dev_label")
    )[("system", "expert_soup_dev_label", "aware", 1)]["overrides"]
    assert dev_label["oracle_routing"] == "label"
    assert (
        dev_label["shared_adapter_scale"],
        dev_label["expert_scale"],
    ) == quality.SOUP_DEV_SCALES
    assert "shared_adapter_lid_scale" not in soup["overrides"]
    # Routed by the multilingual LoRA at full weight: only that differs.
    for name, base in [
        ("expert_soup_ml_routed", soup),
        ("expert_soup_dev_ml_routed", tuned),
    ]:
        routed = quality.plan_runs(_args(tmp_path, systems=name))
        routed = routed[("system", name, "aware", 1)]
        assert routed["deps"] == soup["deps"]
        extra = _added(routed["overrides"], base["overrides"])
        assert extra == {"shared_adapter_lid_scale": 1.0}
    # Rescoring the two likeliest languages: one more option than that.
    rescored = _planned(tmp_path, "expert_soup_dev_rescored")
    extra = _added(rescored["overrides"], tuned["overrides"])
    assert extra == {"shared_adapter_lid_scale": 1.0, "lid_rescore_top_k": 2}
    # The widened grid's choice: only the two weights differ.
    wide = _planned(tmp_path, "expert_soup_dev_wide")
    scales = ("shared_adapter_scale", "expert_scale")
    assert tuple(wide["overrides"][k] for k in scales) == (0.8, 0.5)
    assert set(_added(wide["overrides"], tuned["overrides"])) <= set(scales)
    wide_rescored = _planned(tmp_path, "expert_soup_dev_wide_rescored")
    assert _added(wide_rescored["overrides"], rescored["overrides"]) == {
        "shared_adapter_scale": quality.SOUP_WIDE_SCALES[0]
    }
    # ... only below a confident language step: one more option again.
    confident = _planned(tmp_path, "expert_soup_dev_rescored_confident")
    extra = _added(confident["overrides"], rescored["overrides"])
    assert extra == {"lid_rescore_confidence": 0.9}
    assert confident["deps"] == rescored["deps"]
    window = _planned(tmp_path, "fusion_gate_window")
    assert window["overrides"]["gate_base_pass_bucket_s"] is None
    surer = _planned(tmp_path, "expert_soup_dev_rescored_confident99")
    assert surer["overrides"]["lid_rescore_confidence"] == 0.99
    # The baseline rescored: the multilingual LoRA itself, untrained further.
    baseline = quality.plan_runs(
        _args(tmp_path, systems="multilingual_lora_rescored")
    )[("system", "multilingual_lora_rescored", "aware", 1)]
    assert baseline["overrides"]["student_init"] == adapter
    assert baseline["overrides"]["lid_rescore_top_k"] == 2
    assert baseline["overrides"]["number_of_epochs"] == 0
    # The soup-distilled student: the dev soup teaches, from the ML-LoRA.
    student = quality.plan_runs(_args(tmp_path, systems="distill_soup"))
    student = student[("system", "distill_soup", "aware", 1)]
    assert student["deps"] == soup["deps"]
    assert student["overrides"]["teacher_soup"] == "[0.65,0.5]"
    assert student["overrides"]["multilingual_teacher_weight"] == 0.0
    assert (
        student["overrides"]["student_init"]
        == student["overrides"]["multilingual_teacher"]
        == adapter
    )
    anchored = quality.plan_runs(
        _args(tmp_path, systems="distill_soup_anchor")
    )[("system", "distill_soup_anchor", "aware", 1)]["overrides"]
    assert _added(anchored, student["overrides"]) == {
        "distill_anchor_weight": 0.3
    }
    assert soup["deps"] == {
        ("expert", "plain", "de", 1),
        ("expert", "plain", "it", 1),
        ml_key,
    }
    assert quality.resolve("{arg:max_steps}", {}, "aware", args) == (120, set())
    # --recipe_override wins over a system's own values (dev tuning).
    tuned = _args(
        tmp_path,
        systems="distill_generalist",
        recipe_override="distill_anchor_weight=0",
    )
    run = quality.plan_runs(tuned)[("system", "distill_generalist", "aware", 1)]
    assert run["overrides"]["distill_anchor_weight"] == "0"
    assert run["overrides"]["multilingual_teacher_weight"] == 0.3
    with pytest.raises(ValueError, match="names no run"):
        quality.resolve("{run:nope}", {}, "aware", args)


def test_a_pool_alone_trains_with_what_it_references(tmp_path):
    # --systems '' --pools shared (bench/tune_residual.py): the residual
    # experts and the multilingual LoRA they refine, no system.
    args = _args(tmp_path, systems="", pools="shared")
    tasks = quality.plan_runs(args)
    assert sorted(tasks) == [
        ("expert", "shared", "de", 1),
        ("expert", "shared", "it", 1),
        ("system", "multilingual_lora", "aware", 1),
    ]
    with pytest.raises(SystemExit):
        _args(tmp_path, pools="nope")


def test_a_system_can_be_limited_to_one_scenario(tmp_path):
    # One report for both scenarios: the agnostic-only decodings and the
    # aware-only gate next to systems run in both.
    args = _args(
        tmp_path,
        scenarios="aware,agnostic",
        systems="fusion_gate/aware,multilingual_lora,"
        "expert_soup_dev_rescored/agnostic",
    )
    tasks = quality.plan_runs(args)
    runs = sorted(k[1:3] for k in tasks if k[0] == "system")
    assert runs == [
        ("expert_soup_dev_rescored", "agnostic"),
        ("fusion_gate", "aware"),
        ("multilingual_lora", "agnostic"),
        ("multilingual_lora", "aware"),
    ]
    # A run another one reads is still planned in its scenario: the
    # agnostic soup reads the agnostic multilingual LoRA.
    only_soup = _args(
        tmp_path,
        scenarios="aware,agnostic",
        systems="expert_soup_dev_rescored/agnostic",
    )
    planned = sorted(k[1:3] for k in quality.plan_runs(only_soup))
    assert ("multilingual_lora", "agnostic") in planned
    assert ("multilingual_lora", "aware") not in planned
    with pytest.raises(SystemExit):
        _args(tmp_path, systems="fusion_gate/aware_ish")


def test_estimate_of_the_medium_setting(capsys):
    # 6 experts, then 10 systems: the multilingual LoRA at the budget and
    # at 3x in both scenarios, the oracle, four soups (of each LoRA, aware
    # and agnostic rescored) and zero-shot aware.
    estimate = quality.main(
        ["--setting=medium", "--whisper=whisper-base", "--estimate"]
    )
    assert estimate["runs"] == 16
    assert estimate["cpu_seconds"] / 2 <= estimate["wall_seconds"]
    assert estimate["wall_seconds"] < estimate["cpu_seconds"]
    assert "plain/zh/1" in capsys.readouterr().out
    tasks = {"a": {"deps": set()}, "b": {"deps": {"a"}}}
    assert quality.simulate_schedule(tasks, {"a": 3, "b": 4}, jobs=2) == 7


def _fake_corpus(root):
    locale = root / "cv" / "de"
    os.makedirs(locale)
    header = "client_id\tpath\tsentence\n"
    (locale / "train.tsv").write_text(
        header + "".join(f"c\tx{i}.mp3\tHallo\n" for i in range(10))
    )
    os.makedirs(root / "cv" / "it")
    (root / "cv" / "it" / "train.tsv").write_text(
        header + "".join(f"c\ty{i}.mp3\tCiao\n" for i in range(6))
    )
    # An other-synthesizer test of one Italian clip (FLEURS layout).
    folder = root / "festival" / "data" / "it_it"
    os.makedirs(folder / "audio")
    (folder / "test.tsv").write_text(
        "1\tfestival-9.wav\tCiao.\tciao\tc i a o |\t16000\tMALE\n"
    )
    wav = io.BytesIO()
    sf.write(wav, np.zeros(1600), 16000, format="WAV")
    with tarfile.open(folder / "audio" / "test.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("test/festival-9.wav")
        info.size = len(wav.getvalue())
        tar.addfile(info, io.BytesIO(wav.getvalue()))


def test_report_from_fabricated_runs(tmp_path):
    _fake_corpus(tmp_path)
    whisper = tmp_path / "whisper-base"
    os.makedirs(whisper)
    (whisper / "config.json").write_text("{}")
    seed = tmp_path / "work" / "seed1"
    # In-domain: ML-LoRA de 25%, it 50% (macro 37.5); distillation de 0%,
    # it 25% (macro 12.5): gain 66.7%.
    _write_run(
        seed / "multilingual_lora_aware",
        [
            ("de1", "de", "eins zwei drei", "eins zwei drei vier"),
            ("de2", "de", "fünf sechs sieben", "fünf sechs sieben acht"),
            ("it1", "it", "uno due", "uno due tre quattro"),
            ("it2", "it", "cinque sei", "cinque sei sette otto"),
        ],
        epochs=[(1.0, 0.64), (0.5, 0.48)],
        n_train=16,
    )
    _write_run(
        seed / "distillation_aware",
        [
            ("de1", "de", "eins zwei drei vier", "eins zwei drei vier"),
            ("de2", "de", "fünf sechs sieben acht", "fünf sechs sieben acht"),
            ("it1", "it", "uno due tre", "uno due tre quattro"),
            ("it2", "it", "cinque sei sette", "cinque sei sette otto"),
        ],
        epochs=[(1.0, 0.7)],
        n_train=16,
        start_dev=0.75,
    )
    # Out-of-domain file: espeak clips and the Festival clip.
    for name, festival_hyp in (
        ("multilingual_lora_aware", "ciao ciao"),
        ("distillation_aware", "ciao"),
    ):
        _write_run(
            seed / name,
            [
                ("de_fleurs_1", "de", "gut", "gut"),
                ("it_fleurs_2", "it", "no", "sì"),
                ("it_fleurs_festival-9", "it", festival_hyp, "ciao"),
            ],
            prefix="fleurs_",
        )
    argv = [
        f"--whisper={whisper}",
        f"--cv={tmp_path / 'cv'}",
        f"--other_synth={tmp_path / 'festival'}",
        "--languages=de,it",
        "--systems=multilingual_lora,distillation,zero_shot",
        "--scenarios=aware",
        "--seeds=1",
        "--bootstrap=200",
        f"--work={tmp_path / 'work'}",
        f"--out={tmp_path / 'results'}",
        "--collect_only",
    ]
    result = quality.main(argv)
    results = result["results"]
    ml = results["in_domain"]["systems"]["multilingual_lora/aware"]
    distill = results["in_domain"]["systems"]["distillation/aware"]
    assert ml["macro"] == pytest.approx(37.5)
    assert distill["macro"] == pytest.approx(12.5)
    assert distill["paired_gain"]["gain"] == pytest.approx(200 / 3)
    low, high = distill["paired_gain"]["ci"]
    assert low <= 200 / 3 <= high
    assert ml["macro_ci"][0] <= 37.5 <= ml["macro_ci"][1]
    # The FLEURS-layout file splits into the espeak and Festival columns.
    ood = results["out_of_domain"]["systems"]["distillation/aware"]
    assert ood["per_language"]["it"]["mean"] == 100.0
    other = results["other_synth"]
    assert other["languages"] == ["it"]
    assert other["systems"]["multilingual_lora/aware"]["macro"] == 100.0
    assert other["systems"]["distillation/aware"]["macro"] == 0.0
    assert result["other_synth_languages"] == ["it"]
    # Steps = epochs x ceil(16 / 4); dev curve from train_log.txt.
    run = next(
        r for r in result["runs"] if r.get("system") == "multilingual_lora"
    )
    assert run["training"]["optimizer_steps"] == 8
    assert run["training"]["dev_loss"] == [0.64, 0.48]
    assert run["training"]["start_dev_loss"] is None
    run = next(r for r in result["runs"] if r.get("system") == "distillation")
    assert run["training"]["epochs_run"] == 1
    assert run["training"]["start_dev_loss"] == 0.75
    assert run["training"]["dev_loss"] == [0.7]
    assert result["train_clips"] == {"de": 10, "it": 6}
    # Provenance: command, commit, whisper fingerprint, no machine paths.
    written = (tmp_path / "results" / "quality_small.json").read_text()
    assert json.loads(written)["command"] == result["command"]
    assert result["command"].startswith("python bench/quality.py ")
    assert "--cv=<cv>" in result["command"]
    assert "--collect_only" in result["command"]
    assert result["commit"] is None or len(result["commit"]) == 40
    assert result["whisper"]["name"] == "whisper-base"
    assert result["languages"] == ["de", "it"]
    assert str(tmp_path) not in written and ROOT not in written
    assert os.path.expanduser("~") not in written
    markdown = (tmp_path / "results" / "quality_small.md").read_text()
    assert "| distillation | aware | 0.0 | 25.0 | 12.5 [" in markdown
    assert "8 · 0.64→0.48" in markdown
    assert "4 · (start) · 0.75→0.70" in markdown
    assert "absent: de" in markdown
    # A system asked for but never run is named, not silently dropped.
    assert (
        "Not finished, so absent from the tables: plain expert de (seed 1), "
        "plain expert it (seed 1), zero_shot/aware (seed 1)." in markdown
    )


def test_runs_start_as_soon_as_their_inputs_are_done(tmp_path, monkeypatch):
    """A long run does not hold back runs that do not read it, and a run
    finished earlier takes no slot."""
    import threading
    from types import SimpleNamespace

    finished = tmp_path / "b"
    finished.mkdir()
    (finished / "metrics.json").write_text("{}")
    (finished / "model").mkdir()
    (finished / "model" / "model.json").write_text("{}")
    tasks = {
        "a": dict(out=str(tmp_path / "a"), deps=set()),
        "b": dict(out=str(finished), deps=set()),
        "c": dict(out=str(tmp_path / "c"), deps={"b"}),
        "d": dict(out=str(tmp_path / "d"), deps={"c"}),
    }
    release, started = threading.Event(), []

    def fake_run_one(args, task):
        name = os.path.basename(task["out"])
        started.append(name)
        if name == "a":  # long: ends only once d has run beside it
            assert release.wait(10), "c and d waited for a"
        if name == "d":
            release.set()
        return 1.0

    monkeypatch.setattr(quality, "run_one", fake_run_one)
    args = SimpleNamespace(
        work=str(tmp_path), jobs=2, collect_only=False, failed={}
    )
    seconds = quality.run_all(args, tasks)
    # c (d waits on it) is submitted before a; the two start together.
    assert sorted(started[:2]) == ["a", "c"] and started[2] == "d"
    assert seconds == {"a": 1.0, "b": 0.0, "c": 1.0, "d": 1.0}
