"""bench/tune_residual.py: residual pools per point, scored on dev."""

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import tune_residual  # noqa: E402


def _base_work(root):
    """A finished quality work folder: corpus, plain pool, ML LoRA."""
    seed = root / "seed1"
    for name in ("expert_de", "multilingual_lora_aware"):
        (seed / name).mkdir(parents=True)
        (seed / name / "metrics.json").write_text("{}")
        (seed / name / "model").mkdir()
        (seed / name / "model" / "model.json").write_text("{}")
    (seed / "pool" / "de").mkdir(parents=True)
    (seed / "shared_expert_de").mkdir()  # another grid's pool: not linked
    (root / "corpus").mkdir()
    return root


def test_each_point_trains_a_pool_and_the_best_dev_point_is_chosen(
    tmp_path, monkeypatch
):
    base = _base_work(tmp_path / "base")
    languages = ["de", "es", "it", "ru"]
    monkeypatch.setitem(
        tune_residual.quality.SETTINGS["small"], "languages", languages
    )
    # Per lr: each language's dev curve (loss, error rate) by epoch; the
    # start (epoch 0) is the shared LoRA alone, the same for every point.
    start = {"de": 20.0, "es": 10.0, "it": 30.0, "ru": 40.0}
    after = {
        # A lower loss but a higher rate for de: the kept checkpoint is
        # chosen by loss, as in the recipe.
        "0.0001": {"de": (0.5, 21.0), "es": (0.3, 8.0), "it": (0.6, 28.0)},
        # Every loss above the start: each expert keeps the start.
        "0.001": {"de": (0.9, 15.0), "es": (0.9, 5.0), "it": (0.9, 5.0)},
    }
    calls = []

    def fake_quality(argv):
        options = dict(a[2:].split("=", 1) for a in argv)
        calls.append(argv)
        assert options["systems"] == "" and options["pools"] == "shared"
        assert "--recipe_override=valid_search_interval=1" in argv
        seed = os.path.join(options["work"], "seed1")
        assert os.path.islink(os.path.join(seed, "multilingual_lora_aware"))
        assert not os.path.exists(os.path.join(seed, "shared_expert_de"))
        lr = next(a.rsplit("=", 1)[1] for a in argv if "=lr=" in a)
        for lang in languages:
            if lang not in after[lr] and lr == "0.001":
                continue  # ru of this point did not finish
            run = os.path.join(seed, f"shared_expert_{lang}")
            os.makedirs(run)
            loss, rate = after[lr].get(lang, (0.9, 41.0))
            curve = [
                {"epoch": 0, "loss": 0.8, "error_rate": start[lang]},
                {"epoch": 1, "loss": loss, "error_rate": rate},
            ]
            with open(os.path.join(run, "dev_curve.json"), "w") as f:
                json.dump(curve, f)
            with open(os.path.join(run, "train_log.txt"), "w") as f:
                f.write(
                    "epoch: 0, lr: 1e-04 - valid loss: 0.8\n"
                    f"epoch: 1, lr: 1e-04 - train loss: 0.02 - valid loss: {loss}\n"
                )

    monkeypatch.setattr(tune_residual.tune_distill, "run_point", fake_quality)
    out = tmp_path / "results"
    argv = [
        "--whisper=whisper-base",
        f"--base_work={base}",
        "--grid=lr=0.0001,0.001",
        f"--work={tmp_path / 'tune'}",
        f"--out={out}",
    ]
    result = tune_residual.main(argv)
    assert len(calls) == 2
    assert result["chosen"] == "lr-0.0001"
    best = result["points"][0]["score"]
    # de keeps epoch 1 (lower loss) although its rate is higher.
    kept = {
        lang: best["per_language"][lang]["kept"]["error_rate"]
        for lang in languages
    }
    assert kept == {"de": 21.0, "es": 8.0, "it": 28.0, "ru": 40.0}
    assert best["macro_error_rate"] == (21.0 + 8.0 + 28.0 + 40.0) / 4
    assert best["macro_start_error_rate"] == 25.0
    assert result["points"][1]["score"] is None  # ru missing
    markdown = (out / "tune_residual.md").read_text()
    assert "| lr-0.0001 | 21.0 (1) | 8.0 (1) | 28.0 (1) | 40.0 (0) |" in (
        markdown
    )
    assert "| 0.020 / 0.020 / 0.020 / 0.020 |" in markdown
    assert "| lr-0.001 | – | – | – | – | not run |" in markdown
    assert str(tmp_path) not in (out / "tune_residual.json").read_text()

    calls.clear()
    again = tune_residual.main(
        argv[:-1] + [f"--out={tmp_path / 'c'}"] + ["--collect_only"]
    )
    assert calls == [] and again["points"] == result["points"]
