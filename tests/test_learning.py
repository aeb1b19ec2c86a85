"""A contender that did not learn is called that: checked against the majority class, reported, never ranked."""

from __future__ import annotations

from collections import Counter

import finetune
from compare.decide import Constraints, decide
from compare.evaluation import evaluate
from compare.metrics import learning_check
from compare.report import render_markdown
from finetune.config import FinetuneConfig
from finetune.train import train


def test_a_tiny_model_that_collapses_is_reported_as_not_learned_and_never_ranked(
    shared_dir, small_train, small_test, rag_built, tmp_path
):
    # Nine in ten training examples neutral and a learning rate far too high: the tiny GPT-2 learns the prior only.
    neutral = [i for i, label in enumerate(small_train["label"]) if label == "neutral"][:90]
    others = [i for i, label in enumerate(small_train["label"]) if label != "neutral"][:10]
    cfg = FinetuneConfig(base_model=str(shared_dir / "models" / "tiny-random-gpt2"), eval_size=20, epochs=3,
                         learning_rate=1e-2, protocol=False, out=str(tmp_path / "ft"))  # fmt: skip
    train(cfg, small_train.select(neutral + others), show_progress=False)
    collapsed = finetune.load(tmp_path / "ft")
    test = small_test.select(range(80))
    answers = Counter(p.label for p in collapsed.predict(list(test["text"])))
    top, count = answers.most_common(1)[0]
    assert count >= 0.95 * test.num_rows  # the premise: it collapsed onto one label

    report = evaluate({"finetune": collapsed, "rag": rag_built}, test, latency_queries=5)
    ft, rag = report["backends"]["finetune"], report["backends"]["rag"]
    assert ft["learned"] is False and ft["why"].startswith(f"answers '{top}' for {count / 80:.0%} of the 80 texts")
    assert ft["learning_check"]["on"] == "the evaluated texts" and rag["learned"] is True
    baseline = report["baseline"]
    assert baseline["name"] == "majority class" and 0 < baseline["accuracy"] < 1 and baseline["accuracy_ci95"]
    markdown = render_markdown(report)
    rows = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert any(r.startswith("| finetune") and "did not learn" in r for r in rows)
    assert any(r.startswith("| baseline: majority class |") for r in rows)
    assert "## Contenders that did not learn" in markdown

    # Even made the most accurate on paper, a contender that did not learn neither wins nor loses the verdict.
    ft["accuracy"] = 0.99
    rec = decide(report, Constraints())
    assert (
        rec.choice == "rag" and "finetune" not in rec.scores and rec.excluded["finetune"].startswith("did not learn")
    )
    rag["learned"] = False  # and when none learned, the decision says so instead of picking one
    nothing = decide(report, Constraints())
    assert nothing.choice is None and nothing.decided_by == "nothing: no contender learned anything on this data"
    assert nothing.caveats[0].startswith("no contender learned: finetune did not learn")


def test_a_check_made_on_the_validation_part_is_the_one_reported(rag_built, small_test):
    test = small_test.select(range(40))
    check = {**learning_check(["neutral"] * 30, ["neutral"] * 10 + ["positive"] * 20, ["neutral", "positive"]),
             "on": "the validation part"}  # fmt: skip
    report = evaluate({"rag": rag_built}, test, latency_queries=3, learning={"rag": check})
    assert report["backends"]["rag"]["learned"] is False
    assert report["backends"]["rag"]["learning_check"]["on"] == "the validation part"
