"""Reading NIH ChestX-ray14 label and box files exactly as NIH publishes them.

`Data_Entry_2017*.csv(.gz)`: `Finding Labels` is `|`-separated, `No Finding` means none of the 14
findings, and the header's bracketed columns (`OriginalImage[Width,Height]`) split into two CSV
fields each, so the header is realigned before columns are looked up by name.
`BBox_List_2017.csv(.gz)`: one radiologist box per row in the 1024x1024 pixel frame of the
released images; its label `Infiltrate` is the finding `Infiltration`.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.findings import FINDINGS, index_of, parse_nih_labels

IMAGE_COLUMN = "Image Index"
LABELS_COLUMN = "Finding Labels"
PATIENT_COLUMN = "Patient ID"
BBOX_FRAME = 1024  # NIH's boxes are in the pixel frame of the 1024x1024 released PNGs
BBOX_LABEL_ALIASES = {"Infiltrate": "Infiltration"}


class LabelFileError(ValueError):
    """The label file is not in NIH's format; the message says what is wrong."""


@dataclass(frozen=True)
class LabelTable:
    """Images with their patient and a 0/1 matrix over the 14 findings in canonical order."""

    images: tuple[str, ...]
    patients: tuple[str, ...]
    targets: np.ndarray  # (N, 14) float32

    def __len__(self) -> int:
        return len(self.images)

    def index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.images)}

    def subset(self, names: Iterable[str]) -> LabelTable:
        """Rows for `names`, in the order given; a clear error for a name not in the table."""
        lookup = self.index()
        rows: list[int] = []
        for name in names:
            if name not in lookup:
                raise LabelFileError(f"image {name!r} is not in the label file")
            rows.append(lookup[name])
        return LabelTable(
            images=tuple(self.images[i] for i in rows),
            patients=tuple(self.patients[i] for i in rows),
            targets=self.targets[rows],
        )

    def positives(self) -> dict[str, int]:
        """Number of images positive for each finding."""
        counts = self.targets.sum(axis=0).astype(int)
        return {label: int(counts[i]) for i, label in enumerate(FINDINGS)}


@dataclass(frozen=True)
class BoundingBox:
    image: str
    label: str
    x: float
    y: float
    width: float
    height: float


def _open_text(path: Path) -> io.TextIOBase:
    if not path.exists():
        raise LabelFileError(f"label file not found: {path}")
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")  # noqa: SIM115 - returned to a with block


def realign_header(fields: Sequence[str]) -> list[str]:
    """Join header fields that a bracketed group (`Name[a,b]`) split, then name each part.

    `OriginalImage[Width`, `Height]` -> `OriginalImage[Width]`, `OriginalImage[Height]`, so the
    header has one name per data column (`Bbox [x,y,w,h]` likewise gives four names).
    """
    names: list[str] = []
    i = 0
    while i < len(fields):
        field = fields[i].strip()
        if "[" in field and "]" not in field:
            prefix, first = field.split("[", 1)
            parts = [first]
            i += 1
            while i < len(fields) and "]" not in fields[i]:
                parts.append(fields[i].strip())
                i += 1
            if i < len(fields):
                parts.append(fields[i].strip().rstrip("]"))
                i += 1
            names.extend(f"{prefix.strip()}[{part}]" for part in parts)
            continue
        names.append(field)
        i += 1
    return names


def read_labels(path: str | Path) -> LabelTable:
    """Read NIH's `Data_Entry` label file (.csv or .csv.gz) into a `LabelTable`."""
    path = Path(path)
    with _open_text(path) as handle:
        reader = csv.reader(handle)
        try:
            header = realign_header(next(reader))
        except StopIteration:
            raise LabelFileError(f"label file {path} is empty") from None
        missing = [c for c in (IMAGE_COLUMN, LABELS_COLUMN, PATIENT_COLUMN) if c not in header]
        if missing:
            raise LabelFileError(
                f"{path} is not an NIH Data_Entry file: missing column(s) {', '.join(missing)}"
            )
        col_image = header.index(IMAGE_COLUMN)
        col_labels = header.index(LABELS_COLUMN)
        col_patient = header.index(PATIENT_COLUMN)
        images: list[str] = []
        patients: list[str] = []
        rows: list[np.ndarray] = []
        seen: set[str] = set()
        for line_no, record in enumerate(reader, start=2):
            if not record:
                continue
            if len(record) != len(header):
                raise LabelFileError(
                    f"{path}, line {line_no}: {len(record)} fields, the header has {len(header)}"
                )
            name = record[col_image].strip()
            if name in seen:
                raise LabelFileError(f"{path}, line {line_no}: image {name!r} listed twice")
            seen.add(name)
            try:
                labels = parse_nih_labels(record[col_labels])
            except ValueError as exc:
                raise LabelFileError(f"{path}, line {line_no}: {exc}") from None
            target = np.zeros(len(FINDINGS), dtype=np.float32)
            for label in labels:
                target[index_of(label)] = 1.0
            images.append(name)
            patients.append(record[col_patient].strip())
            rows.append(target)
    targets = np.stack(rows) if rows else np.zeros((0, len(FINDINGS)), dtype=np.float32)
    return LabelTable(images=tuple(images), patients=tuple(patients), targets=targets)


def read_boxes(path: str | Path) -> list[BoundingBox]:
    """Read NIH's `BBox_List_2017` file (.csv or .csv.gz): image, finding, x, y, w, h (1024 frame)."""
    path = Path(path)
    boxes: list[BoundingBox] = []
    with _open_text(path) as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader)
        except StopIteration:
            raise LabelFileError(f"box file {path} is empty") from None
        if len(header) < 6 or header[0].strip() != IMAGE_COLUMN:
            raise LabelFileError(f"{path} is not an NIH BBox_List file (header {header!r})")
        for line_no, record in enumerate(reader, start=2):
            if not record:
                continue
            try:
                label = BBOX_LABEL_ALIASES.get(record[1].strip(), record[1].strip())
                index_of(label)
                x, y, w, h = (float(v) for v in record[2:6])
            except (ValueError, IndexError) as exc:
                raise LabelFileError(f"{path}, line {line_no}: {exc}") from None
            boxes.append(BoundingBox(record[0].strip(), label, x, y, w, h))
    return boxes
