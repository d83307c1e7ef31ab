"""Patient-wise splits: no patient in two splits, with and without NIH's split lists."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.labels import LabelTable, read_labels
from training.splits import (
    SPLIT_NAMES,
    SplitError,
    assert_patient_disjoint,
    patients_of,
    split_by_patient,
    split_from_lists,
)


@pytest.fixture(scope="module")
def nih64(nih64_dir: Path) -> LabelTable:
    return read_labels(nih64_dir / "Data_Entry.csv")


def _assert_disjoint_and_complete(table: LabelTable, split, expected_images: set[str]) -> None:
    patients = patients_of(split, table)
    for i, first in enumerate(SPLIT_NAMES):
        for second in SPLIT_NAMES[i + 1 :]:
            assert not patients[first] & patients[second], (first, second)
    names = [name for part in SPLIT_NAMES for name in split.names(part)]
    assert len(names) == len(set(names))
    assert set(names) == expected_images


def test_hash_split_is_patient_disjoint_and_deterministic(nih64: LabelTable) -> None:
    split = split_by_patient(nih64)
    _assert_disjoint_and_complete(nih64, split, set(nih64.images))
    assert split == split_by_patient(read_labels_again(nih64))
    assert all(split.names(name) for name in SPLIT_NAMES)


def read_labels_again(table: LabelTable) -> LabelTable:
    """The same rows in reverse order: the split must not depend on row order."""
    return LabelTable(table.images[::-1], table.patients[::-1], table.targets[::-1])


def test_hash_split_fractions_on_the_full_file(data_dir: Path) -> None:
    table = read_labels(data_dir / "nih-metadata" / "Data_Entry_2017_v2020.csv.gz")
    split = split_by_patient(table)
    patients = patients_of(split, table)
    total = len(set(table.patients))
    assert abs(len(patients["train"]) / total - 0.7) < 0.01
    assert abs(len(patients["validation"]) / total - 0.1) < 0.01
    assert abs(len(patients["test"]) / total - 0.2) < 0.01
    _assert_disjoint_and_complete(table, split, set(table.images))


def test_split_lists_give_the_test_set_and_carve_validation_by_patient(nih64: LabelTable, tmp_path: Path) -> None:
    # NIH's lists are patient-wise: put every image of the patients with even IDs in test.
    test = {img for img, pid in zip(nih64.images, nih64.patients, strict=True) if int(pid) % 2 == 0}
    train_val = set(nih64.images) - test
    (tmp_path / "test_list.txt").write_text("\n".join(sorted(test)) + "\n")
    (tmp_path / "train_val_list.txt").write_text("\n".join(sorted(train_val | {"not_here.png"})) + "\n")
    split = split_from_lists(nih64, tmp_path)
    assert set(split.test) == test
    assert set(split.train) | set(split.validation) == train_val
    assert split.validation and split.train
    _assert_disjoint_and_complete(nih64, split, set(nih64.images))


def test_lists_that_share_a_patient_are_refused(nih64: LabelTable, tmp_path: Path) -> None:
    images = sorted(nih64.images)
    # 00000001_000.png and 00000001_001.png belong to patient 1: one in test, one in train_val
    (tmp_path / "test_list.txt").write_text("00000001_000.png\n")
    (tmp_path / "train_val_list.txt").write_text("\n".join(i for i in images if i != "00000001_000.png"))
    with pytest.raises(SplitError, match="patient"):
        split_from_lists(nih64, tmp_path, validation_fraction=0.0)


def test_assert_patient_disjoint_catches_an_image_wise_split(nih64: LabelTable) -> None:
    split = split_by_patient(nih64)
    patient_of = dict(zip(nih64.images, nih64.patients, strict=True))
    train_patients = [patient_of[name] for name in split.train]
    moved = next(name for name in split.train if train_patients.count(patient_of[name]) > 1)
    leaky = type(split)(
        tuple(n for n in split.train if n != moved), split.validation, split.test + (moved,), "image-wise"
    )
    with pytest.raises(SplitError, match="both train and test"):
        assert_patient_disjoint(leaky, nih64)


def test_missing_split_list_is_a_clear_error(nih64: LabelTable, tmp_path: Path) -> None:
    with pytest.raises(SplitError, match="train_val_list.txt"):
        split_from_lists(nih64, tmp_path)
