"""jobs/curve.py: the protocol (same examples, same validation fifth), the budget, seeds, bands and crossover."""

from __future__ import annotations

import json
import statistics

import pytest

from compare.crossover import crossover, crossover_range, describe_crossover, plot_curve, series
from core.types import LABELS
from finetune.config import FinetuneConfig
from finetune.protocol import SMALL_DATA_LR
from jobs import curve as curve_module
from jobs.curve import CurveConfig, finetune_budget, summarise


def banded(ft, ft_std, rag, rag_std, sizes=(100, 300, 1000, 3000)):
    return {
        "sizes": list(sizes),
        "backends": {"finetune": {"mean": ft, "std": ft_std}, "rag": {"mean": rag, "std": rag_std}},
    }


def test_the_cli_runs_every_contender_over_two_seeds_on_the_same_examples(
    shared_dir, data_dir, tmp_path, capsys, monkeypatch
):
    from core.split import Split

    splits = []  # every cut made: the curve's own for retrieval, then the fine-tune's, per run
    real_parts = Split.parts

    def recording(split, dataset):
        fit, validation = real_parts(split, dataset)
        splits.append((list(fit["text"]), list(validation["text"])))
        return fit, validation

    monkeypatch.setattr(Split, "parts", recording)
    tunings = []  # the tuned embedder's own run is tested below; here only its place in the curve

    def tuned_retrieval(embedder, tune, fit, validation, seed, test):
        tunings.append((tune.min_steps, tune.max_steps, tune.batch_size, seed, fit.num_rows))
        return {"accuracy": 0.5 + seed / 10, "macro_f1": 0.5, "tuning_steps": 1, "seconds": 0.1}

    monkeypatch.setattr(curve_module, "run_tuned_retrieval", tuned_retrieval)
    tiny = str(shared_dir / "models" / "tiny-random-gpt2")
    argv = ["--sizes", "20,40", "--seeds", "0,1", "--data", str(data_dir), "--test-limit", "30"]
    argv += ["--base-model", tiny, "--epochs", "1", "--batch-size", "8", "--min-steps", "6"]
    argv += ["--embedder-min-steps", "1", "--embedder-max-steps", "100", "--embedder-batch-size", "4"]
    argv += ["--out", str(tmp_path / "curve")]
    assert curve_module.main(argv) == 0
    curve = json.loads((tmp_path / "curve" / "curve.json").read_text())
    assert (tmp_path / "curve" / "curve.png").read_bytes()[:4] == b"\x89PNG"
    assert curve["sizes"] == [20, 40] and curve["seeds"] == [0, 1] and curve["test_size"] == 30
    assert list(curve["backends"]) == ["finetune", "rag", "rag-tuned"]
    for backend in curve["backends"].values():
        runs = backend["runs"]
        assert len(runs) == 2 and all(len(r) == 2 for r in runs)
        columns = list(zip(*runs, strict=True))
        assert backend["mean"] == pytest.approx([statistics.fmean(c) for c in columns], abs=1e-4)
        assert backend["std"] == pytest.approx([statistics.stdev(c) for c in columns], abs=1e-4)
    assert curve["backends"]["rag"]["runs"][0] != curve["backends"]["rag"]["runs"][1]  # other samples per seed
    assert [(r["size"], r["seed"], r["fit_size"], r["validation_size"]) for r in curve["rows"]] == [
        (20, 0, 16, 4), (40, 0, 32, 8), (20, 1, 16, 4), (40, 1, 32, 8)]  # fmt: skip
    assert len(splits) == 8 and all(splits[i] == splits[i + 1] for i in range(0, 8, 2))  # fine-tune = retrieval
    assert curve["budget"]["finetune"] == [
        {"size": 20, "steps": 6, "epochs": 3.0, "learning_rate": SMALL_DATA_LR, "batch_size": 8},
        {"size": 40, "steps": 8, "epochs": 2.0, "learning_rate": SMALL_DATA_LR, "batch_size": 8},
    ]
    # The same compute: the fine-tune's 6 steps of 8 texts are 48 encodings, 6 steps of 4 pairs for the embedder.
    assert curve["budget"]["rag-tuned"] == [
        {"size": 20, "steps": 6, "rule": "compute", "learning_rate": 2e-5, "batch_size": 4, "loss": "cosine-pairs"},
        {"size": 40, "steps": 8, "rule": "compute", "learning_rate": 2e-5, "batch_size": 4, "loss": "cosine-pairs"},
    ]
    assert tunings == [(6, 6, 4, 0, 16), (8, 8, 4, 0, 32), (6, 6, 4, 1, 16), (8, 8, 4, 1, 32)]
    assert curve["backends"]["rag-tuned"] == {"mean": [0.55, 0.55], "std": [0.0707, 0.0707],
                                              "runs": [[0.5, 0.5], [0.6, 0.6]]}  # fmt: skip
    assert curve["crossover"] == crossover(curve) and curve["crossover_range"] == crossover_range(curve)
    assert curve["config"]["seeds"] == [0, 1] and "hold-out fifth" in curve["protocol"]
    out = capsys.readouterr().out
    assert json.loads(out[out.rindex('{\n  "sizes"') :])["mean"]["rag"] == curve["backends"]["rag"]["mean"]


def test_budget_reaches_the_minimum_steps_with_the_small_data_rate():
    cfg, budget = finetune_budget(FinetuneConfig(epochs=3, batch_size=16), 80, 20, seed=2, min_steps=200)
    assert budget == {"steps": 200, "epochs": 40.0, "learning_rate": SMALL_DATA_LR, "batch_size": 16}
    # The run's config: the curve's slices and seed; the fine-tune's own protocol (applied by `train`) does the rest.
    assert (cfg.eval_size, cfg.seed, cfg.train_size, cfg.min_steps, cfg.protocol) == (20, 2, None, 200, True)
    _, many = finetune_budget(FinetuneConfig(epochs=3, batch_size=16), 8000, 2000, seed=0, min_steps=200)
    assert (many["steps"], many["epochs"]) == (1500, 3.0)  # enough steps already: the epochs as given
    _, scratch = finetune_budget(FinetuneConfig(from_scratch=True), 80, 20, seed=0, min_steps=200)
    assert scratch["learning_rate"] == FinetuneConfig(from_scratch=True).lr
    _, chosen = finetune_budget(FinetuneConfig(learning_rate=3e-5), 80, 20, seed=0, min_steps=0)
    assert (chosen["learning_rate"], chosen["steps"]) == (3e-5, 15)


def test_curve_config_takes_the_fine_tunes_defaults_and_refuses_bad_values(capsys):
    cfg = CurveConfig()
    assert (cfg.epochs, cfg.batch_size, cfg.seeds) == (FinetuneConfig().epochs, FinetuneConfig().batch_size, (0, 1, 2))
    assert cfg.finetune_config(100, "x").epochs == FinetuneConfig().epochs
    for bad, message in [
        (["--seeds", "1,1"], "seeds must be distinct"),
        (["--sizes", "5"], "at least 10"),
        (["--epochs", "0"], "epochs must be positive"),
        (["--bogus", "1"], "unrecognized arguments"),
    ]:
        with pytest.raises(SystemExit):
            curve_module.main(bad)
        assert message in capsys.readouterr().err


def test_summarise_and_series_of_both_formats():
    assert summarise([[0.5, 0.7], [0.7, 0.7]]) == {"mean": [0.6, 0.7], "std": [0.1414, 0.0],
                                                   "runs": [[0.5, 0.7], [0.7, 0.7]]}  # fmt: skip
    assert summarise([[0.5, 0.7]])["std"] == [0.0, 0.0]
    new = banded([0.4, 0.6], [0.1, 0.0], [0.5, 0.5], [0.0, 0.0], sizes=(10, 20))
    assert series(new, "finetune") == [(10, 0.4, 0.1), (20, 0.6, 0.0)]
    assert series({"sizes": [10], "backends": {"rag": [0.5]}}, "rag") == [(10, 0.5, 0.0)]
    assert series(new, "rag-tuned") == []


@pytest.mark.parametrize(
    ("ft", "ft_std", "point", "span"),
    [
        ([0.40, 0.52, 0.66, 0.72], [0.0] * 4, 1000, [1000, 1000]),  # no spread: a point
        ([0.40, 0.58, 0.66, 0.72], [0.01, 0.03, 0.08, 0.01], 300, [300, 3000]),  # bands overlap from 300 to 3000
        ([0.40, 0.52, 0.62, 0.64], [0.0, 0.0, 0.02, 0.02], 1000, [1000, None]),  # never clearly ahead
        ([0.60, 0.50, 0.60, 0.50], [0.0] * 4, None, None),  # behind at the largest size
    ],
    ids=["point", "range", "open-range", "behind"],
)
def test_crossover_is_a_range_when_the_bands_overlap(ft, ft_std, point, span):
    curve = banded(ft, ft_std, [0.50, 0.57, 0.61, 0.63], [0.0] * 4)
    assert crossover(curve) == point and crossover_range(curve) == span
    curve.update(crossover=point, crossover_range=span)
    text = describe_crossover(curve)
    if point is None:
        assert "does not stay ahead" in text
    elif span[0] != span[1]:
        assert f"from {point} labeled examples (bands overlap: {span[0]} to" in text
    else:
        assert text.endswith(f"from {point} labeled examples")


def test_plot_draws_a_band_per_backend(tmp_path, monkeypatch):
    import matplotlib.axes

    bands = []
    real = matplotlib.axes.Axes.fill_between
    monkeypatch.setattr(matplotlib.axes.Axes, "fill_between", lambda ax, *a, **k: bands.append(a) or real(ax, *a, **k))
    curve = banded([0.4, 0.58, 0.66, 0.72], [0.01, 0.03, 0.08, 0.01], [0.5, 0.57, 0.61, 0.63], [0.02] * 4)
    curve.update(test_size=1000, seeds=[0, 1, 2], crossover=300, crossover_range=[300, 3000])
    path = plot_curve(curve, tmp_path / "curve.png")
    assert path.read_bytes()[:4] == b"\x89PNG" and len(bands) == 2
    assert list(bands[0][1]) == pytest.approx([0.39, 0.55, 0.58, 0.71])  # mean - std of the fine-tune
    old = {"sizes": [100, 300], "backends": {"finetune": [0.4, 0.6], "rag": [0.5, 0.55]}, "test_size": 10}
    assert plot_curve(old, tmp_path / "old.png").exists()  # a curve written before seeds still plots


def test_the_tuned_line_tunes_a_copy_on_the_fitting_examples_and_picks_its_vote(embedder, small_train, small_test):
    from jobs.curve import Scoring, holdout_split, run_tuned_retrieval
    from rag.tune_embedder import TuneEmbedderConfig

    before = embedder.model.encode(["so happy", "so sad"])  # the model itself, not a cached or traced vector
    sample = small_train.select(range(40))
    fit, validation = holdout_split(sample, seed=0).parts(sample)
    scoring = Scoring(list(small_test["text"][:20]), list(small_test["label"][:20]), list(LABELS))
    tune = TuneEmbedderConfig(min_steps=1, max_steps=1, batch_size=4, warmup=0.0)
    result = run_tuned_retrieval(embedder, tune, fit, validation, 0, scoring)
    assert result["tuning_steps"] == 1 and 0 <= result["accuracy"] <= 1
    assert result["vote"]["k"] <= fit.num_rows == 32 and 0 <= result["vote"]["accuracy"] <= 1
    assert (embedder.model.encode(["so happy", "so sad"]) == before).all()  # the shared embedder is untouched


def test_the_vote_is_chosen_on_the_validation_fifth_and_applied(embedder, small_train):
    from jobs.curve import holdout_split
    from rag import RagConfig, build_index
    from rag.tuning import choose_vote

    sample = small_train.select(range(100))
    fit, validation = holdout_split(sample, seed=0).parts(sample)
    clf = build_index(RagConfig(tune=False, k=3), fit, embedder=embedder, show_progress=False)
    chosen = choose_vote(clf, list(fit["label"]), list(validation["text"]), list(validation["label"]), seed=0)
    assert (clf.k, clf.weighting, clf.temperature) == (chosen["k"], chosen["weighting"], chosen["temperature"])
    predicted = [p.label for p in clf.predict(list(validation["text"]))]
    hits = sum(p == r for p, r in zip(predicted, validation["label"], strict=True))
    assert chosen["accuracy"] == pytest.approx(hits / validation.num_rows, abs=1e-4)


def test_the_embedder_budget_takes_only_its_two_rules(capsys):
    with pytest.raises(SystemExit) as exit_:
        curve_module.main(["--embedder-budget", "unlimited"])
    assert exit_.value.code == 2 and "invalid choice: 'unlimited'" in capsys.readouterr().err
