"""Build real DICOM files (bytes) from PNGs or arrays with pydicom, for tests in every room.

`dicom_from_png(path, ...)` is the usual entry point; `dicom_from_array(pixels, ...)` does the same from
an 8-bit greyscale array. The pixel values written are chosen so that `shared.images.read_image` gives
back the PNG's own pixels (`png / 255`) when a window is set with `window="full"`; without a window the
reader scales by the data's min-max instead.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Literal

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)

Compression = Literal["jpeg-baseline", "jpeg2000-lossless", "rle"]
Window = tuple[float, float] | Literal["full"] | None

DEFAULT_METADATA: dict[str, str] = {
    "PatientID": "TEST-0001",
    "PatientName": "Test^Patient",
    "AccessionNumber": "ACC0001",
    "StudyDate": "20240105",
    "Modality": "DX",
    "ViewPosition": "PA",
    "BodyPartExamined": "CHEST",
}


def png_pixels(png_path: str | Path) -> np.ndarray:
    """The PNG as 8-bit greyscale (H, W), as the reader would see it before dividing by 255."""
    with Image.open(png_path) as im:
        return np.asarray(im.convert("L"), dtype=np.uint8)


def dicom_from_png(
    png_path: str | Path,
    *,
    photometric: str = "MONOCHROME2",
    bits: int = 8,
    rescale: tuple[float, float] | None = None,
    window: Window = None,
    window_function: str = "LINEAR_EXACT",
    compressed: Compression | None = None,
    frames: int = 1,
    metadata: dict[str, str | None] | None = None,
    preamble: bool = True,
) -> bytes:
    """A DICOM file whose first frame shows the PNG (see `dicom_from_array` for the options)."""
    return dicom_from_array(
        png_pixels(png_path),
        photometric=photometric,
        bits=bits,
        rescale=rescale,
        window=window,
        window_function=window_function,
        compressed=compressed,
        frames=frames,
        metadata=metadata,
        preamble=preamble,
    )


def dicom_from_array(
    grey: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits: int = 8,
    rescale: tuple[float, float] | None = None,
    window: Window = None,
    window_function: str = "LINEAR_EXACT",
    compressed: Compression | None = None,
    frames: int = 1,
    metadata: dict[str, str | None] | None = None,
    preamble: bool = True,
) -> bytes:
    """Encode an 8-bit greyscale image (H, W) as DICOM.

    - bits: 8 stores the values as they are, 16 stores `value * 257` (0..65535).
    - photometric: "MONOCHROME1" stores the values inverted (`max - value`), as such a file would.
    - rescale: (slope, intercept) written as Rescale Slope/Intercept; the stored values stay as above,
      so the modality values are `stored * slope + intercept`.
    - window: (center, width), or "full": the window (with `window_function`) that maps the whole stored
      range back onto [0, 1] after the rescale, so the reader returns `grey / 255` exactly.
    - compressed: "jpeg-baseline" (Pillow-encoded JPEG, 8-bit only, lossy), "jpeg2000-lossless", "rle".
    - frames: frame 0 is the image; later frames are visibly different (rolled and inverted).
    - metadata: overrides `DEFAULT_METADATA`; a None value leaves that element out.
    - preamble: False writes a bare data set (no preamble, no 'DICM', no file meta), implicit VR.
    """
    stored_max = 255 if bits == 8 else 65535
    stored = _stored_values(np.asarray(grey, dtype=np.uint8), bits, photometric)
    ds = _base_dataset(stored.shape, bits, photometric, frames, metadata)
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = (f"{rescale[0]:g}", f"{rescale[1]:g}")
        ds.RescaleType = "US"
    if window is not None:
        center, width = _full_window(stored_max, rescale, window_function) if window == "full" else window
        ds.WindowCenter, ds.WindowWidth = f"{center:.6g}", f"{width:.6g}"
        ds.VOILUTFunction = window_function
    all_frames = _frames(stored, frames, stored_max)
    _set_pixel_data(ds, all_frames, bits, compressed)
    return _write(ds, preamble)


def dataset_bytes(ds: Dataset, *, preamble: bool = True) -> bytes:
    """Write any data set; with `preamble` it gets file meta (Explicit VR Little Endian if none set)."""
    return _write(ds, preamble)


def _stored_values(grey: np.ndarray, bits: int, photometric: str) -> np.ndarray:
    if bits not in (8, 16):
        raise ValueError("bits must be 8 or 16")
    values = grey.astype(np.uint16) * 257 if bits == 16 else grey.copy()
    if photometric == "MONOCHROME1":
        values = (65535 if bits == 16 else 255) - values
    elif photometric != "MONOCHROME2":
        raise ValueError("photometric must be MONOCHROME1 or MONOCHROME2")
    return values.astype(np.uint16 if bits == 16 else np.uint8)


def _full_window(
    stored_max: int, rescale: tuple[float, float] | None, function: str
) -> tuple[float, float]:
    slope, intercept = rescale if rescale is not None else (1.0, 0.0)
    low, high = sorted((intercept, stored_max * slope + intercept))
    if function == "LINEAR_EXACT":
        return (low + high) / 2, high - low
    if function == "LINEAR":  # PS3.3 C.11.2.1.2.1: center - 0.5 and width - 1 inside the formula
        return (low + high) / 2 + 0.5, high - low + 1
    raise ValueError("window='full' supports LINEAR and LINEAR_EXACT")


def _frames(stored: np.ndarray, frames: int, stored_max: int) -> list[np.ndarray]:
    extra = [np.roll(stored_max - stored, shift=17 * i, axis=1).astype(stored.dtype) for i in range(1, frames)]
    return [stored, *extra]


def _base_dataset(
    shape: tuple[int, ...], bits: int, photometric: str, frames: int, metadata: dict[str, str | None] | None
) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    for keyword, value in {**DEFAULT_METADATA, **(metadata or {})}.items():
        if value is not None:
            setattr(ds, keyword, value)
        elif keyword in ds:
            delattr(ds, keyword)
    ds.Rows, ds.Columns = int(shape[0]), int(shape[1])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    return ds


def _set_pixel_data(ds: Dataset, frames: list[np.ndarray], bits: int, compressed: Compression | None) -> None:
    array = np.stack(frames) if len(frames) > 1 else frames[0]
    if compressed is None:
        ds.PixelData = array.tobytes()
        _file_meta(ds, ExplicitVRLittleEndian)
    elif compressed == "jpeg-baseline":
        if bits != 8:
            raise ValueError("JPEG baseline holds 8-bit data only")
        ds.PixelData = encapsulate([_pillow_jpeg(frame) for frame in frames])
        ds["PixelData"].VR = "OB"
        ds.LossyImageCompression = "01"
        _file_meta(ds, JPEGBaseline8Bit)
    else:
        syntax = {"jpeg2000-lossless": JPEG2000Lossless, "rle": RLELossless}[compressed]
        _file_meta(ds, ExplicitVRLittleEndian)
        ds.compress(syntax, array, generate_instance_uid=False)


def _pillow_jpeg(frame: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame, mode="L").save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _file_meta(ds: Dataset, transfer_syntax: UID) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta = meta


def _write(ds: Dataset, preamble: bool) -> bytes:
    buffer = io.BytesIO()
    if preamble:
        if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
            if "SOPClassUID" not in ds:
                ds.SOPClassUID = DigitalXRayImageStorageForPresentation
                ds.SOPInstanceUID = generate_uid()
            _file_meta(ds, ExplicitVRLittleEndian)
        ds.preamble = b"\0" * 128
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    else:
        if ds.get("file_meta") is not None and ds.file_meta.TransferSyntaxUID.is_compressed:
            raise ValueError("a bare data set (no file meta) cannot carry compressed pixel data")
        bare = Dataset()
        bare.update(ds)
        pydicom.dcmwrite(buffer, bare, implicit_vr=True, little_endian=True, enforce_file_format=False)
    return buffer.getvalue()


__all__ = [
    "DEFAULT_METADATA",
    "dataset_bytes",
    "dicom_from_array",
    "dicom_from_png",
    "png_pixels",
]
