"""NIH label and box files read exactly as NIH publishes them (the real files in ../shared/data)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from shared.findings import FINDINGS
from training.labels import LabelFileError, read_boxes, read_labels, realign_header

# data/README.md: labels of nih-64 by count
NIH64_COUNTS = {
    "Effusion": 170, "Infiltration": 162, "Atelectasis": 95, "Cardiomegaly": 83, "Consolidation": 42,
    "Pneumothorax": 40, "Nodule": 39, "Emphysema": 37, "Mass": 35, "Fibrosis": 32, "Edema": 31,
    "Pleural_Thickening": 29, "Pneumonia": 11, "Hernia": 9,
}
# NIH ChestX-ray14 as published (Data_Entry_2017_v2020): images per finding
NIH_FULL_COUNTS = {
    "Atelectasis": 11559, "Cardiomegaly": 2776, "Consolidation": 4667, "Edema": 2303, "Effusion": 13317,
    "Emphysema": 2516, "Fibrosis": 1686, "Hernia": 227, "Infiltration": 19894, "Mass": 5782, "Nodule": 6331,
    "Pleural_Thickening": 3385, "Pneumonia": 1431, "Pneumothorax": 5302,
}


def test_header_bracketed_columns_become_one_name_per_field() -> None:
    fields = ["Image Index", "Finding Labels", "Patient ID", "OriginalImage[Width", "Height]",
              "OriginalImagePixelSpacing[x", "y]"]
    assert realign_header(fields) == [
        "Image Index", "Finding Labels", "Patient ID", "OriginalImage[Width]", "OriginalImage[Height]",
        "OriginalImagePixelSpacing[x]", "OriginalImagePixelSpacing[y]",
    ]


def test_nih64_counts_match_the_readme(nih64_dir: Path) -> None:
    table = read_labels(nih64_dir / "Data_Entry.csv")
    assert len(table) == 1000
    assert len(set(table.patients)) == 264
    assert table.positives() == NIH64_COUNTS
    no_finding = int((table.targets.sum(axis=1) == 0).sum())
    assert no_finding == 499
    assert table.targets.shape == (1000, len(FINDINGS))


def test_full_nih_file_gz(data_dir: Path) -> None:
    table = read_labels(data_dir / "nih-metadata" / "Data_Entry_2017_v2020.csv.gz")
    assert len(table) == 112_120
    assert len(set(table.patients)) == 30_805
    assert table.positives() == NIH_FULL_COUNTS
    row = table.index()["00000001_001.png"]
    assert {FINDINGS[k] for k in np.flatnonzero(table.targets[row])} == {"Cardiomegaly", "Emphysema"}


def test_csv_and_csv_gz_read_the_same(nih64_dir: Path, tmp_path: Path) -> None:
    raw = (nih64_dir / "Data_Entry.csv").read_bytes()
    packed = tmp_path / "Data_Entry.csv.gz"
    packed.write_bytes(gzip.compress(raw))
    plain, zipped = read_labels(nih64_dir / "Data_Entry.csv"), read_labels(packed)
    assert plain.images == zipped.images and plain.patients == zipped.patients
    np.testing.assert_array_equal(plain.targets, zipped.targets)


def test_unknown_label_and_wrong_file_are_clear_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("Image Index,Finding Labels,Patient ID\na.png,Effusion|Broken Bone,1\n")
    with pytest.raises(LabelFileError, match="line 2.*Broken Bone"):
        read_labels(bad)
    other = tmp_path / "other.csv"
    other.write_text("name,label\na.png,x\n")
    with pytest.raises(LabelFileError, match="missing column"):
        read_labels(other)
    with pytest.raises(LabelFileError, match="not found"):
        read_labels(tmp_path / "absent.csv")


def test_subset_refuses_unknown_images(nih64_dir: Path) -> None:
    table = read_labels(nih64_dir / "Data_Entry.csv")
    assert table.subset(["00000001_001.png"]).images == ("00000001_001.png",)
    with pytest.raises(LabelFileError, match="not in the label file"):
        table.subset(["nope.png"])


def test_bbox_file(data_dir: Path) -> None:
    boxes = read_boxes(data_dir / "nih-metadata" / "BBox_List_2017.csv.gz")
    assert len(boxes) == 984
    assert len({b.image for b in boxes}) == 880
    labels = {b.label for b in boxes}
    assert len(labels) == 8 and "Infiltration" in labels and labels <= set(FINDINGS)
    first = boxes[0]
    assert first.image == "00013118_008.png" and first.label == "Atelectasis"
    assert first.x == pytest.approx(225.0847, abs=1e-3) and first.height == pytest.approx(79.1864, abs=1e-3)
