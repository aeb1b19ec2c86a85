"""Training throughput of this project's recipe vs the seed recipe, on a real-size GPT-2, in one run.

Both train GPT2Config() (GPT-2 124M's shape, random init: only speed is measured) on the same real tweets:
- seed recipe: every tweet padded to 1024 tokens, batch 1, gradient accumulation 4;
- this recipe (`FinetuneConfig.to_training_args`): dynamic padding, length-grouped batches of 16, truncation at 128.
Samples/s counts from the end of the first optimizer step to the end of the last, so start-up is excluded.

    python bench/finetune_speed.py [--data SRC] [--seed-steps 3] [--steps 12]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers import (
    DataCollatorWithPadding,
    GPT2Config,
    GPT2ForSequenceClassification,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    default_data_collator,
)

from bench.common import machine, table
from core.data import label_names, load_tweets
from finetune.config import FinetuneConfig
from finetune.train import load_tokenizer, tokenize


class StepClock(TrainerCallback):
    """Times optimizer steps: samples/s from the end of step 1 to the end of the last step."""

    def __init__(self, samples_per_step: int) -> None:
        self.samples_per_step = samples_per_step
        self.times: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter())

    def samples_per_second(self) -> float:
        return (len(self.times) - 1) * self.samples_per_step / (self.times[-1] - self.times[0])


def model(tokenizer, n_labels: int) -> GPT2ForSequenceClassification:
    return GPT2ForSequenceClassification(
        GPT2Config(num_labels=n_labels, pad_token_id=tokenizer.pad_token_id, vocab_size=len(tokenizer))
    )


def run(label: str, args: TrainingArguments, dataset, collator, net, samples_per_step: int) -> dict:
    clock = StepClock(samples_per_step)
    trainer = Trainer(model=net, args=args, train_dataset=dataset, data_collator=collator, callbacks=[clock])
    trainer.train()
    print(f"{label}: {clock.samples_per_second():.2f} samples/s", flush=True)
    return {"recipe": label, "samples/s": clock.samples_per_second(), "steps timed": len(clock.times) - 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--seed-steps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--tokenizer", default=None)
    args = parser.parse_args()

    train = load_tweets(args.data, split="train", limit=2000, seed=0)
    labels = label_names(train)
    cfg = FinetuneConfig(from_scratch=True, tokenizer=args.tokenizer, batch_size=16)
    tokenizer, source = load_tokenizer(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        label_ids = {name: i for i, name in enumerate(labels)}
        padded = train.map(
            lambda b: {
                **tokenizer(b["text"], padding="max_length", truncation=True, max_length=1024),
                "labels": [label_ids[x] for x in b["label"]],
            },
            batched=True,
            remove_columns=train.column_names,
        )
        seed_args = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=1,
            gradient_accumulation_steps=4,
            max_steps=args.seed_steps,
            report_to="none",
            save_strategy="no",
            disable_tqdm=True,
        )
        seed_label = "seed: pad to 1024, batch 1, accumulation 4"
        seed = run(seed_label, seed_args, padded, default_data_collator, model(tokenizer, len(labels)), 4)

        ours_args = cfg.to_training_args(
            show_progress=False,
            output_dir=tmp,
            max_steps=args.steps,
            eval_strategy="no",
            save_strategy="no",
            load_best_model_at_end=False,
        )
        ours = run(
            "this project: dynamic padding, length-grouped batch 16",
            ours_args,
            tokenize(train, tokenizer, labels, cfg.max_length),
            DataCollatorWithPadding(tokenizer),
            model(tokenizer, len(labels)),
            cfg.batch_size,
        )
    ours["speed-up"] = ours["samples/s"] / seed["samples/s"]
    seed["speed-up"] = 1.0
    print(f"\nGPT-2 124M shape (random init), {source.describe()}; {machine()}")
    print(table([seed, ours]))


if __name__ == "__main__":
    main()
