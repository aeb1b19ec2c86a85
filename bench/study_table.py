"""The verdict on a user's own small data, measured: ``jobs.study`` on TweetEval emotion and irony at a few sizes
and budgets, one study at a time (run it alone on the machine).

``python -m bench.study_table [--sizes 300,2000] [--budgets 2,5,10] [--data-root DIR]``

Each study is run as the app's *Your data* tab runs it (the command line's defaults): on an upload of that many rows
of the train split, a fifth held out as its test set (at most 1,000 test texts); it fine-tunes the pretrained
MiniLM (the offline pretrained encoder; ``--base-model`` for another) under its
training protocol. Prints one row per study and contender: macro-F1 with its interval, whether it learned, its
optimizer steps, the verdict and what decided it, the curve's sizes (or why none), planned vs actual minutes and
the wall time of the whole command; then one JSON line with every row.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench.common import table
from core.settings import packaged_embedder_path

ROOT = Path(__file__).resolve().parent.parent


def upload(data: Path, rows: int, out: Path) -> Path:
    """What a visitor would upload: `rows` labeled examples of the data's train split (seeded, stratified), as CSV."""
    from core.data import load_tweets, stratified_sample

    path = out.with_suffix(".csv")
    path.parent.mkdir(parents=True, exist_ok=True)
    stratified_sample(load_tweets(str(data), split="train"), rows, seed=0, what="train").to_pandas().to_csv(path)
    return path


def study(data: Path, rows: int, budget: float, base_model: str, out: Path) -> dict:
    """Run one study on an upload of `rows` examples (its test set held out of them, as in the app), in its own
    process (its memory freed after it), and read what it wrote."""
    command = [sys.executable, "-m", "jobs.study", "--data", str(upload(data, rows, out)), "--out", str(out),
               "--overwrite", "--budget-minutes", str(budget),
               "--base-model", base_model,
               "--embedder", packaged_embedder_path()]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = (time.perf_counter() - start) / 60
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed", "wall": wall}
    read = lambda name: json.loads((out / name).read_text())  # noqa: E731
    return {"report": read("report.json"), "decision": read("decision.json"), "study": read("study.json"),
            "wall": wall}  # fmt: skip


def rows_of(name: str, rows: int, budget: float, result: dict) -> list[dict]:
    """The table rows of one study: one per contender, and the majority baseline."""
    head = {"data": name, "rows": rows, "budget min": budget}
    if "error" in result:
        return [{**head, "contender": "-", "verdict": f"error: {result['error']}"}]
    report, decision, state = result["report"], result["decision"], result["study"]
    finetune = state.get("finetune") or {}
    tune = state.get("tune") or {}
    steps = {"finetune": (finetune.get("protocol") or {}).get("steps"), "rag-tuned": tune.get("steps")}
    verdict = " / ".join(decision.get("tie") or []) or decision.get("choice") or "none"
    minutes = state["minutes"]
    curve = state["stages"].get("curve") or {}
    sizes = decision.get("measured_on", {}).get("learning_curve")
    head["curve"] = ",".join(map(str, sizes)) if sizes else f"none: {(curve.get('reason') or '')[:60]}"
    head["wall min"] = f"{result['wall']:.2f}"
    out = []
    for backend, b in report["backends"].items():
        low, high = b["macro_f1_ci95"]
        out.append({**head, "contender": backend, "macro-F1": f"{b['macro_f1']:.3f} [{low:.3f}, {high:.3f}]",
                    "learned": b.get("learned"), "steps": steps.get(backend) or "-", "verdict": verdict,
                    "decided by": (decision.get("decided_by") or "")[:90],
                    "planned / actual min": f"{minutes['planned']:.2f} / {minutes['actual']:.2f}"})  # fmt: skip
    base = report["baseline"]
    low, high = base["macro_f1_ci95"]
    out.append(
        {**head, "contender": "majority baseline", "macro-F1": f"{base['macro_f1']:.3f} [{low:.3f}, {high:.3f}]"}
    )
    for skipped in ("finetune", "tune"):
        stage = state["stages"].get(skipped) or {}
        if stage.get("status") == "skipped":
            out.append({**head, "contender": f"{skipped}: skipped", "verdict": stage.get("reason", "")[:120]})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--datasets", default="tweeteval_emotion,tweeteval_irony")
    parser.add_argument("--sizes", default="300,2000")
    parser.add_argument("--budgets", default="2,5,10")
    parser.add_argument("--base-model", default=packaged_embedder_path())
    parser.add_argument("--out", default="artifacts/bench-study")
    args = parser.parse_args(argv)
    results = []
    for name in args.datasets.split(","):
        for rows in (int(s) for s in args.sizes.split(",")):
            for budget in (float(b) for b in args.budgets.split(",")):
                out = Path(args.out) / f"{name}-{rows}-{budget:g}"
                result = study(Path(args.data_root) / name, rows, budget, args.base_model, out)
                results += rows_of(name, rows, budget, result)
                print(f"done {name} {rows} rows {budget:g} min in {result['wall']:.2f} min", flush=True)
    print(table(results))
    print(json.dumps({"rows": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
