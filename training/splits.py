"""Patient-wise train / validation / test splits.

Either NIH's official lists (`train_val_list.txt`, `test_list.txt`; validation is then carved from
train_val by patient), or a deterministic split by a hash of the Patient ID. No patient is ever in
two splits: images of one patient are strongly correlated, so sharing patients inflates metrics.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from training.labels import LabelTable

SPLIT_NAMES = ("train", "validation", "test")
DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)
DEFAULT_SALT = "xray-split-v1"
TRAIN_VAL_LIST = "train_val_list.txt"
TEST_LIST = "test_list.txt"


class SplitError(ValueError):
    """A split that cannot be made or would share patients; the message says why."""


@dataclass(frozen=True)
class Split:
    """Image names per split (sorted), and how the split was made."""

    train: tuple[str, ...]
    validation: tuple[str, ...]
    test: tuple[str, ...]
    method: str

    def names(self, split: str) -> tuple[str, ...]:
        if split not in SPLIT_NAMES:
            raise SplitError(f"unknown split {split!r}; expected one of {', '.join(SPLIT_NAMES)}")
        return getattr(self, split)

    def as_dict(self) -> dict[str, object]:
        return {"method": self.method, **{name: list(self.names(name)) for name in SPLIT_NAMES}}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Split:
        try:
            return cls(
                train=tuple(data["train"]),  # type: ignore[arg-type]
                validation=tuple(data["validation"]),  # type: ignore[arg-type]
                test=tuple(data["test"]),  # type: ignore[arg-type]
                method=str(data.get("method", "recorded")),
            )
        except KeyError as exc:
            raise SplitError(f"recorded split lacks the {exc.args[0]!r} list") from None


def patient_fraction(patient_id: str, salt: str = DEFAULT_SALT) -> float:
    """A stable number in [0, 1) for a patient (sha256, independent of Python's hash seed)."""
    digest = hashlib.sha256(f"{salt}:{patient_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _assign(fraction: float, fractions: tuple[float, ...]) -> int:
    edge = 0.0
    for i, share in enumerate(fractions):
        edge += share
        if fraction < edge:
            return i
    return len(fractions) - 1


def _check_fractions(fractions: tuple[float, ...], count: int) -> tuple[float, ...]:
    if len(fractions) != count or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise SplitError(f"need {count} non-negative split fractions, got {fractions}")
    total = sum(fractions)
    return tuple(f / total for f in fractions)


def split_by_patient(
    table: LabelTable,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    salt: str = DEFAULT_SALT,
) -> Split:
    """Deterministic patient-wise split by hashed Patient ID (70/10/20 of patients by default)."""
    shares = _check_fractions(tuple(fractions), 3)
    buckets: list[list[str]] = [[], [], []]
    for image, patient in zip(table.images, table.patients, strict=True):
        buckets[_assign(patient_fraction(patient, salt), shares)].append(image)
    method = f"sha256('{salt}:'+Patient ID) fractions {'/'.join(f'{f:g}' for f in fractions)}"
    return _checked_split(buckets, method, table)


def _read_list(path: Path) -> set[str]:
    if not path.exists():
        raise SplitError(f"split list not found: {path} (expected NIH's {TRAIN_VAL_LIST} and {TEST_LIST})")
    return {line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()}


def split_from_lists(
    table: LabelTable,
    directory: str | Path,
    validation_fraction: float = 0.125,
    salt: str = DEFAULT_SALT,
) -> Split:
    """NIH's official split: `test_list.txt` is the test set; validation is carved from
    `train_val_list.txt` by hashed Patient ID. Images not in the label table are ignored; images in
    the table but in neither list are left out."""
    directory = Path(directory)
    train_val = _read_list(directory / TRAIN_VAL_LIST)
    test = _read_list(directory / TEST_LIST)
    overlap = train_val & test
    if overlap:
        raise SplitError(f"{len(overlap)} image(s) are in both {TRAIN_VAL_LIST} and {TEST_LIST}")
    shares = _check_fractions((1.0 - validation_fraction, validation_fraction), 2)
    buckets: list[list[str]] = [[], [], []]
    for image, patient in zip(table.images, table.patients, strict=True):
        if image in test:
            buckets[2].append(image)
        elif image in train_val:
            buckets[_assign(patient_fraction(patient, salt), shares)].append(image)
    method = f"NIH {TEST_LIST}; validation {validation_fraction:g} of {TRAIN_VAL_LIST} patients by sha256"
    return _checked_split(buckets, method, table)


def _checked_split(buckets: list[list[str]], method: str, table: LabelTable) -> Split:
    """Train/validation/test from three buckets of image names, refused if a patient is in two."""
    split = Split(train=tuple(sorted(buckets[0])), validation=tuple(sorted(buckets[1])),
                  test=tuple(sorted(buckets[2])), method=method)
    assert_patient_disjoint(split, table)
    return split


def patients_of(split: Split, table: LabelTable) -> dict[str, set[str]]:
    patient_of = dict(zip(table.images, table.patients, strict=True))
    return {name: {patient_of[image] for image in split.names(name)} for name in SPLIT_NAMES}


def assert_patient_disjoint(split: Split, table: LabelTable) -> None:
    """Raise `SplitError` if any patient has images in two splits."""
    patients = patients_of(split, table)
    for i, first in enumerate(SPLIT_NAMES):
        for second in SPLIT_NAMES[i + 1 :]:
            shared = patients[first] & patients[second]
            if shared:
                example = ", ".join(sorted(shared)[:5])
                raise SplitError(
                    f"{len(shared)} patient(s) are in both {first} and {second} (e.g. {example}); "
                    "split by Patient ID"
                )
