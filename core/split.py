"""The split: which rows of the labeled training data a contender learns from (fit) and which choose its checkpoint,
its vote or its blend (validation). Made once, saved beside every artifact that used it, handed to whatever trains
or evaluates on the same rows; nothing re-derives it from a seed.

The test set is never part of it: it is the data's own test split (or the study's held-out share), kept apart.

    >>> split = Split.carve(["a", "a", "a", "b", "b", "b"], validation_size=2, seed=0)
    >>> len(split.fit), len(split.validation), split.rows
    (4, 2, 6)
    >>> sorted(set(split.fit) | set(split.validation)) == list(range(6))
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.data import DataError, stratified_indices
from core.files import atomic_write_json, read_json

SPLIT_FILE = "split.json"
FORMAT = 1


@dataclass(frozen=True)
class Split:
    """Row ids (positions in a labeled dataset of `rows` rows) of the fit part and the validation part.

    The two never overlap. `seed` and `how` say how it was made, for a reader; nothing re-derives it from them.
    """

    fit: tuple[int, ...]
    validation: tuple[int, ...]
    rows: int
    seed: int = 0
    how: str = ""

    def __post_init__(self) -> None:
        if self.rows < 0:
            raise ValueError(f"rows must not be negative, got {self.rows}")
        for name in ("fit", "validation"):
            ids = getattr(self, name)
            if any(not 0 <= i < self.rows for i in ids):
                raise ValueError(f"the split's {name} ids must be row positions below {self.rows}")
            if len(set(ids)) != len(ids):
                raise ValueError(f"the split's {name} ids repeat a row")
        if shared := set(self.fit) & set(self.validation):
            raise ValueError(f"the split's fit and validation parts share {len(shared)} row(s)")

    @classmethod
    def carve(cls, labels: Sequence[str], validation_size: int, fit_size: int | None = None, seed: int = 0) -> Split:
        """A seeded, stratified validation part of `validation_size` rows, then `fit_size` of the rest (all when
        None), each label keeping its share.

        Raises:
            DataError: not enough rows for the sizes asked (the message says what would fit).
        """
        n = len(labels)
        if n == 0:
            raise DataError("the training data has no examples")
        if validation_size >= n:
            raise DataError(f"eval_size {validation_size} leaves no training examples out of {n}")
        if fit_size is not None and fit_size + validation_size > n:
            raise DataError(
                f"asked for {fit_size} training + {validation_size} evaluation examples but the data has only {n}; "
                f"use --train-size {n - validation_size} or less (or a smaller --eval-size)"
            )
        validation = stratified_indices(labels, validation_size, seed=seed)
        taken = set(validation)
        rest = [i for i in range(n) if i not in taken]
        if fit_size is not None and fit_size < len(rest):
            rest = [rest[i] for i in stratified_indices([labels[i] for i in rest], fit_size, seed=seed)]
        how = f"a seeded (seed {seed}), stratified validation part of {validation_size} of {n} rows"
        if fit_size is not None and fit_size < n - validation_size:
            how += f", then a stratified {fit_size} of the rest to fit"
        return cls(tuple(rest), tuple(validation), n, seed, how)

    @classmethod
    def of(cls, dataset, validation_size: int, fit_size: int | None = None, seed: int = 0) -> Split:
        """`carve` on a dataset's ``label`` column."""
        return cls.carve(list(dataset["label"]), validation_size, fit_size, seed)

    def parts(self, dataset):
        """``(fit, validation)``: the two parts of `dataset`, the data this split was made on.

        Raises:
            DataError: `dataset` has another number of rows (it is not the data the split was made on).
        """
        if dataset.num_rows != self.rows:
            raise DataError(
                f"the split was made on {self.rows} rows but this data has {dataset.num_rows}: it is not the data "
                "the artifact was trained on"
            )
        return dataset.select(self.fit), dataset.select(self.validation)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "rows": self.rows, "seed": self.seed, "how": self.how,
                "fit": list(self.fit), "validation": list(self.validation)}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Split:
        try:
            return cls(tuple(data["fit"]), tuple(data["validation"]), int(data["rows"]), int(data.get("seed", 0)),
                       str(data.get("how", "")))  # fmt: skip
        except (KeyError, TypeError) as err:
            raise ValueError(f"not a split record: {err}") from err

    def save(self, path: str | Path) -> Path:
        """Write the split as JSON, atomically; a directory gets `SPLIT_FILE` inside it."""
        path = Path(path)
        if path.is_dir():
            path = path / SPLIT_FILE
        atomic_write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, path: str | Path) -> Split:
        """The split saved at `path` (a file, or a directory holding `SPLIT_FILE`)."""
        path = Path(path)
        if path.is_dir():
            path = path / SPLIT_FILE
        return cls.from_dict(read_json(path, "split record"))

    def summary(self) -> dict[str, Any]:
        """Sizes and how it was made, for run records and reports (the ids stay in the split's own file)."""
        return {"fit": len(self.fit), "validation": len(self.validation), "rows": self.rows, "how": self.how}


def split_parts(dataset, validation_size: int, fit_size: int | None = None, seed: int = 0):
    """``(fit, validation)`` of `dataset` by a fresh `Split.of`: for a caller that saves nothing of it (a sample of
    its own, as the curve's slices)."""
    return Split.of(dataset, validation_size, fit_size, seed).parts(dataset)
