"""Is the image a frontal chest X-ray at all? A check run on every study before its findings count.

Two signals, either of which flags the study "not a frontal chest X-ray: findings unreliable":
- the DICOM header says so: a modality that is not a radiograph (CT, MR, US, ...), a lateral or
  oblique view, or a body part that is not the chest;
- the image is far from the frontal chest X-rays the model was trained on. The model's input is
  shrunk to a 32x32 thumbnail, standardised (zero mean, unit variance: exposure does not matter) and
  projected onto the main components ("eigen-chests") of the training images' thumbnails; what the
  components cannot express, the residual energy, measured in units of its mean on the training
  images, is the distance. The limit is a high quantile of the validation images' distances.

The reference (mean, components, residual scale) lives in the bundle's `frontal.npz`; the card's
`frontal` entry says how it was fitted and holds the limit (training/frontal.py fits both). A
bundle without them gets the header check only. docs/MODEL_CARD.md reports what share of frontal
X-rays and of each kind of negative the check flags, and why the model's own features were not used.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from shared.images import DicomMetadata

FRONTAL_FILE = "frontal.npz"
THUMBNAIL = 32
FLAG_TEXT = "not a frontal chest X-ray: findings unreliable"
# DICOM Modality values of projection radiographs (CR, DX, the retired RG). OT and SC (other,
# secondary capture, e.g. a scanned film) and a missing value say nothing: the image decides.
RADIOGRAPHY = frozenset({"CR", "DX", "RG"})
UNDECLARED = frozenset({"", "OT", "SC"})
# DICOM ViewPosition values that are not frontal: lateral (LL, RL) and oblique (LLO, RLO, ...).
NOT_FRONTAL_VIEWS = frozenset({"LL", "RL", "LLO", "RLO", "LAO", "RAO", "LPO", "RPO", "LAT", "LATERAL"})
CHEST_WORDS = ("CHEST", "THORAX", "LUNG", "TORSO")
MODALITY_NAMES = {"CT": "computed tomography", "MR": "magnetic resonance", "US": "ultrasound",
                  "NM": "nuclear medicine", "PT": "PET", "MG": "mammography", "XA": "angiography",
                  "RF": "fluoroscopy", "IO": "intra-oral X-ray", "PX": "panoramic dental X-ray"}


@dataclass(frozen=True)
class FrontalCheck:
    """The verdict for one image: `flagged` with a `reason` a clinician can read, and the image's
    distance from the training X-rays (None when the bundle has no reference)."""

    flagged: bool
    reason: str | None = None
    distance: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"flagged": self.flagged, "reason": self.reason,
                "distance": None if self.distance is None else round(self.distance, 3)}


def thumbnail(model_input: np.ndarray) -> np.ndarray:
    """(S, S, 3) preprocessed model input -> (1024,) float64 standardised 32x32 thumbnail.

    One channel is enough (the three are the same grey less a constant); the standardisation
    removes the preprocessing's offsets and scale and the film's exposure."""
    grey = np.ascontiguousarray(np.asarray(model_input, dtype=np.float32)[..., 0])
    small = np.asarray(Image.fromarray(grey, mode="F").resize((THUMBNAIL, THUMBNAIL), Image.BILINEAR),
                       dtype=np.float64).ravel()
    small -= small.mean()
    spread = small.std()
    return small / spread if spread > 1e-6 else small


@dataclass(frozen=True)
class FrontalReference:
    """The eigen-chest model of frontal X-ray thumbnails and the distance limit."""

    mean: np.ndarray  # (1024,)
    components: np.ndarray  # (k, 1024), orthonormal rows
    residual_scale: float  # mean residual energy of the training thumbnails
    limit: float  # distances above this are flagged

    def distances(self, thumbnails: np.ndarray) -> np.ndarray:
        """(N, 1024) thumbnails -> (N,) residual energy in units of the training mean."""
        centred = np.atleast_2d(thumbnails) - self.mean
        residual = centred - (centred @ self.components.T) @ self.components
        return np.einsum("ij,ij->i", residual, residual) / self.residual_scale

    def save(self, directory: str | Path) -> None:
        path = Path(directory) / FRONTAL_FILE
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, mean=self.mean.astype(np.float32), components=self.components.astype(np.float32),
                 residual_scale=np.float64(self.residual_scale))
        tmp.replace(path)

    @classmethod
    def load(cls, directory: str | Path, card_entry: Mapping[str, Any]) -> FrontalReference | None:
        """The bundle's reference, or None when it has none (`card_entry` is the card's `frontal`)."""
        path = Path(directory) / FRONTAL_FILE
        if not card_entry or not path.is_file():
            return None
        with np.load(path) as stored:
            return cls(mean=stored["mean"].astype(np.float64), components=stored["components"].astype(np.float64),
                       residual_scale=float(stored["residual_scale"]), limit=float(card_entry["limit"]))


def header_reason(modality: str | None, view_position: str | None, body_part: str | None) -> str | None:
    """Why the DICOM header says this is not a frontal chest radiograph, or None."""
    modality = (modality or "").strip().upper()
    if modality not in RADIOGRAPHY and modality not in UNDECLARED:
        name = MODALITY_NAMES.get(modality)
        return f"the DICOM modality is {modality}{f' ({name})' if name else ''}, not a radiograph"
    view = (view_position or "").strip().upper()
    if view in NOT_FRONTAL_VIEWS:
        return f"the DICOM view position is {view}, not a frontal (PA or AP) view"
    part = (body_part or "").strip().upper()
    if part and not any(word in part for word in CHEST_WORDS):
        return f"the DICOM body part is {part}, not the chest"
    return None


def check(model_input: np.ndarray, reference: FrontalReference | None,
          header: DicomMetadata | None = None) -> FrontalCheck:
    """The verdict for one image: its DICOM header first (None for PNG/JPEG), then the distance of
    its model input from the training X-rays."""
    distance = None if reference is None else float(reference.distances(thumbnail(model_input))[0])
    reason = None if header is None else header_reason(header.modality, header.view_position,
                                                         header.body_part_examined)
    if reason is None and reference is not None and distance is not None and distance > reference.limit:
        reason = (f"the image looks unlike the frontal chest X-rays the model was trained on "
                  f"(distance {distance:.1f}, limit {reference.limit:.1f})")
    return FrontalCheck(flagged=reason is not None, reason=reason, distance=distance)
