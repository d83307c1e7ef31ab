"""Shared by the training tests: small NIH label files cut from nih-64's own."""

from __future__ import annotations

import csv
from pathlib import Path

from training.labels import read_labels
from training.splits import split_by_patient


def label_subset(nih64_dir: Path, out: Path, train: int, validation: int, test: int) -> Path:
    """NIH's own rows (same header) of the first `train`, `validation` and `test` patients of each
    default split of nih-64, written to `out`."""
    table = read_labels(nih64_dir / "Data_Entry.csv")
    split = split_by_patient(table)
    patient_of = dict(zip(table.images, table.patients, strict=True))
    keep: set[str] = set()
    for name, count in (("train", train), ("validation", validation), ("test", test)):
        keep |= set(sorted({patient_of[i] for i in split.names(name)})[:count])
    with open(nih64_dir / "Data_Entry.csv", newline="") as source, open(out, "w", newline="") as target:
        lines = source.read().splitlines(keepends=True)
        target.write(lines[0])
        target.writelines(line for line in lines[1:] if next(csv.reader([line]))[3] in keep)
    return out
