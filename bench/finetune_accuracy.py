"""Fine-tuned accuracy on the full test set: (a) pretrained all-MiniLM-L6-v2, (b) GPT-2 trained from scratch.

Both are fine-tuned on the full train split (minus the evaluation slice carved from it) with this project's
recipe, then scored on every test tweet, in fp32 and with int8 dynamic quantization. The trained models are kept
(``artifacts/finetune-minilm``, ``artifacts/finetune-gpt2-scratch``) for the comparison and the app; an existing one
is reused unless ``--retrain``.

    python bench/finetune_accuracy.py [--data SRC] [--which minilm,scratch] [--retrain]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sklearn.metrics import accuracy_score, f1_score

import finetune
from bench.common import machine, table
from core.cli import setup_logging
from core.data import load_tweets
from core.settings import packaged_embedder_path
from finetune.config import FinetuneConfig
from finetune.train import train

RUNS = {
    "minilm": lambda data: FinetuneConfig(
        base_model=packaged_embedder_path(), data=data, epochs=2, batch_size=32, out="artifacts/finetune-minilm"
    ),
    "scratch": lambda data: FinetuneConfig(
        from_scratch=True,
        scratch_size="small",
        data=data,
        epochs=4,
        batch_size=32,
        out="artifacts/finetune-gpt2-scratch",
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--which", default="minilm,scratch")
    parser.add_argument("--retrain", action="store_true")
    args = parser.parse_args()
    setup_logging()

    test = load_tweets(args.data, split="test")
    truth = list(test["label"])
    rows = []
    for which in args.which.split(","):
        cfg = RUNS[which](args.data)
        if args.retrain or not (Path(cfg.out) / "run.json").exists():
            train(cfg, overwrite=True)
        for quantize in (False, True):
            model = finetune.load(cfg.out, quantize=quantize)
            start = time.perf_counter()
            predicted = [p.label for p in model.predict(test["text"])]
            seconds = time.perf_counter() - start
            run = model.meta
            rows.append(
                {
                    "model": which + (" int8" if quantize else " fp32"),
                    "what": model.describe(),
                    "train size": run["train_size"],
                    "epochs": run["epochs_run"],
                    "train s": run["train_seconds"],
                    "train samples/s": run["train_samples_per_second"],
                    "eval acc": run["eval_accuracy"],
                    "test acc": accuracy_score(truth, predicted),
                    "test macro F1": f1_score(truth, predicted, average="macro"),
                    "test texts/s": len(truth) / seconds,
                }
            )
            print(table(rows[-1:]), flush=True)
    print(f"\n{machine()}; test: {len(truth)} tweets")
    print(table(rows))


if __name__ == "__main__":
    main()
