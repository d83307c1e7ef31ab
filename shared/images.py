"""Bytes in, a validated greyscale X-ray (plus DICOM metadata) out, or an `InvalidImage` a clinician
can act on.

The format is sniffed from the content only (never the file name or Content-Type). Limits from
`ImageLimits` are checked from the header, before any pixel is decoded. `inspect_image` stops there
(what the web upload path calls); `read_image` goes on to decode.

Pixel conventions: float32 (H, W) in [0, 1], 0 = black (MONOCHROME2 sense). PNG/JPEG colour is
reduced to luminance (ITU-R 601 weights), 8-bit data is divided by 255 and 16-bit PNG by 65535.
An 8-bit greyscale image also keeps its uint8 levels (`XRayImage.source`), which the model's
preprocessing reads directly; the float pixels are then made only when something asks for them.
DICOM: modality LUT (Rescale Slope/Intercept), then the first VOI LUT or window, mapped onto [0, 1]
by that LUT's or window's output range; with no VOI (or an unusable one) the data are scaled by their
own min-max; MONOCHROME1 is inverted; a multi-frame file gives its first frame.
"""

from __future__ import annotations

import io
import logging
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from shared import png_fast, png_stream
from shared.config import ImageLimits

logger = logging.getLogger(__name__)

NOT_AN_IMAGE = "not a PNG, JPEG or DICOM file"
EMPTY_FILE = "the file is empty"
NO_PIXEL_DATA = "DICOM file has no pixel data"
DICOM_CORRUPT = "DICOM file is truncated or corrupt"
DICOM_TOO_DEEP = "DICOM file is nested too deeply to read (it is corrupt or not a real X-ray file)"

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
DICOM_PREFIX_OFFSET = 128
DICOM_PREFIX = b"DICM"

_FORMAT_NAMES = {"png": "PNG", "jpeg": "JPEG", "dicom": "DICOM"}
_PIL_FORMATS = {"png": ["PNG"], "jpeg": ["JPEG", "MPO"]}
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_ROTATED_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations that swap width and height
_EXIF_ORIENTATION = 0x0112

_DEFLATED_TS = "1.2.840.10008.1.2.1.99"
_SUPPORTED_PHOTOMETRIC = {"MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422"}
_DICOM_IDENTITY_TAGS = ("SOPClassUID", "Modality", "PixelData", "Rows", "StudyInstanceUID")
_EXPLICIT_VRS = {
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"OB", b"OD",
    b"OF", b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"SV", b"TM", b"UC", b"UI",
    b"UL", b"UN", b"UR", b"US", b"UT", b"UV",
}
_METADATA_KEYWORDS = {
    "patient_id": "PatientID",
    "patient_name": "PatientName",
    "study_instance_uid": "StudyInstanceUID",
    "accession_number": "AccessionNumber",
    "study_date": "StudyDate",
    "modality": "Modality",
    "view_position": "ViewPosition",
    "body_part_examined": "BodyPartExamined",
}


class InvalidImage(ValueError):
    """The upload is not a usable X-ray; the message is meant for the clinician who sent it."""


@dataclass(frozen=True)
class DicomMetadata:
    patient_id: str | None = None
    patient_name: str | None = None
    study_instance_uid: str | None = None
    accession_number: str | None = None
    study_date: str | None = None
    modality: str | None = None
    view_position: str | None = None
    body_part_examined: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return asdict(self)


@dataclass(frozen=True)
class ImageInfo:
    format: str  # "png" | "jpeg" | "dicom"
    width: int
    height: int
    metadata: DicomMetadata | None = None


@dataclass(frozen=True)
class XRayImage:
    source: np.ndarray  # (H, W), MONOCHROME2 sense: uint8 levels of an 8-bit greyscale image, else `pixels`
    info: ImageInfo

    @cached_property
    def pixels(self) -> np.ndarray:
        """float32 (H, W) in [0, 1], 0 = black (made from the levels, once, on first use)."""
        if self.source.dtype != np.uint8:
            return self.source
        pixels = self.source.astype(np.float32)
        pixels /= np.float32(255.0)  # in place: no second array
        return pixels

    @property
    def width(self) -> int:
        return int(self.source.shape[1])

    @property
    def height(self) -> int:
        return int(self.source.shape[0])


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------


def sniff_format(data: bytes) -> str:
    """Return "png", "jpeg" or "dicom" from the content; raise InvalidImage for anything else."""
    if not data:
        raise InvalidImage(EMPTY_FILE)
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(JPEG_SIGNATURE):
        return "jpeg"
    if data[DICOM_PREFIX_OFFSET:DICOM_PREFIX_OFFSET + 4] == DICOM_PREFIX or _looks_like_raw_dicom(data):
        return "dicom"
    raise InvalidImage(NOT_AN_IMAGE)


def inspect_image(data: bytes, limits: ImageLimits) -> ImageInfo:
    """Validate format, size limits and structure from the header (no pixel decoding); a PNG's
    compressed stream is also inflated and counted, so one missing rows is refused here."""
    return _open(bytes(data), limits, verify_stream=True).info


def read_image(data: bytes, limits: ImageLimits) -> XRayImage:
    """Validate and decode an upload into greyscale pixels in [0, 1]."""
    opened = _open(bytes(data), limits)
    source = opened.decode()
    if source.dtype != np.uint8:
        source = _unit_range(source)
    info = opened.info
    if source.shape != (info.height, info.width):  # e.g. a DICOM whose decoder disagrees with Rows
        info = ImageInfo(info.format, int(source.shape[1]), int(source.shape[0]), info.metadata)
    return XRayImage(source=source, info=info)


def _unit_range(pixels: np.ndarray) -> np.ndarray:
    """Contiguous float32 in [0, 1]: NaN to 0, the rest clipped. Checked first with two cheap
    reductions: what an 8-bit or 16-bit decode gives already is, and is returned as it is."""
    pixels = np.asarray(pixels, dtype=np.float32)
    if pixels.size and pixels.flags.c_contiguous and pixels.min() >= 0.0 and pixels.max() <= 1.0:
        return pixels  # a NaN fails both comparisons
    return np.ascontiguousarray(np.clip(np.nan_to_num(pixels, nan=0.0), 0.0, 1.0), dtype=np.float32)


def read_image_file(path: str | Path, limits: ImageLimits) -> XRayImage:
    """Read a file (never more than the byte limit) and decode it as `read_image` does."""
    return read_image(_read_bounded(Path(path), limits), limits)


# ----------------------------------------------------------------------------------------------
# Shared checks
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Opened:
    info: ImageInfo
    handle: Any  # a lazily-loaded PIL image or a pydicom Dataset
    png: bytes | None = None  # the file, for an 8-bit greyscale PNG with no orientation to apply
    png_chunks: _PngChunks | None = None  # any PNG: what its stream check reads

    def decode(self) -> np.ndarray:
        if self.info.format == "dicom":
            return _decode_dicom(self.handle)
        if self.png is not None:  # the common X-ray PNG: shared.png_fast, Pillow whenever it declines
            levels = png_fast.decode_grey8(self.png)  # checks the inflated size exactly itself
            if levels is not None:
                return levels
        if self.png_chunks is not None:  # Pillow would fill missing rows with black
            _check_png_stream(self.png_chunks)
        return _decode_pil(self.handle, self.info.format)


def _open(data: bytes, limits: ImageLimits, verify_stream: bool = False) -> _Opened:
    _check_size(len(data), limits)
    fmt = sniff_format(data)
    if fmt == "dicom":
        return _open_dicom(data, limits)
    return _open_pil(data, fmt, limits, verify_stream)


def _read_bounded(path: Path, limits: ImageLimits) -> bytes:
    try:
        with path.open("rb") as fh:
            size = path.stat().st_size
            _check_size(size, limits)
            return fh.read(limits.max_bytes + 1)
    except OSError as exc:
        raise InvalidImage(f"cannot read {path.name}: {exc.strerror or exc}") from exc


def _check_size(size: int, limits: ImageLimits) -> None:
    if size == 0:
        raise InvalidImage(EMPTY_FILE)
    if size > limits.max_bytes:
        raise InvalidImage(f"file is {_human_size(size)}; the limit is {_human_size(limits.max_bytes)}")


def _human_size(n: int) -> str:
    for unit, factor in (("MB", 1024 * 1024), ("KB", 1024)):
        if n >= factor:
            value = n / factor
            return f"{value:.0f} {unit}" if value == int(value) or value >= 10 else f"{value:.1f} {unit}"
    return f"{n} bytes"


def _check_dimensions(width: int, height: int, limits: ImageLimits) -> None:
    if width * height > limits.max_pixels:
        raise InvalidImage(
            f"image is {width}x{height} pixels; the limit is {limits.max_pixels:,} pixels"
        )
    if min(width, height) < limits.min_side:
        raise InvalidImage(
            f"image is {width}x{height} pixels; the minimum is {limits.min_side} pixels per side"
        )


@contextmanager
def _failures_as(message: str) -> Iterator[None]:
    """Turn any library exception into InvalidImage(message), keeping the cause chained."""
    try:
        yield
    except InvalidImage:
        raise
    except RecursionError as exc:
        raise InvalidImage(DICOM_TOO_DEEP) from exc
    except MemoryError as exc:
        raise InvalidImage("image is too large to decode on this server") from exc
    except Exception as exc:
        logger.info("image rejected (%s): %r", message, exc)
        raise InvalidImage(message) from exc


# ----------------------------------------------------------------------------------------------
# PNG and JPEG (Pillow)
# ----------------------------------------------------------------------------------------------


def _open_pil(data: bytes, fmt: str, limits: ImageLimits, verify_stream: bool) -> _Opened:
    corrupt = f"{_FORMAT_NAMES[fmt]} file is truncated or corrupt"
    chunks = _check_png_chunks(data, corrupt) if fmt == "png" else None
    exif_orientation = chunks.orientation if chunks is not None else None
    if fmt == "jpeg":
        _check_jpeg_structure(data, corrupt)
    image = _pil_open(data, fmt, limits, corrupt)
    width, height = image.size
    _check_dimensions(width, height, limits)
    with _failures_as(corrupt):
        orientation = exif_orientation if fmt == "png" else image.getexif().get(_EXIF_ORIENTATION)
    if orientation in _ROTATED_ORIENTATIONS:
        width, height = height, width
    if chunks is not None and verify_stream:
        _check_png_stream(chunks)
    fast_png = fmt == "png" and image.mode == "L" and orientation is None
    return _Opened(ImageInfo(fmt, width, height, None), image, data if fast_png else None, chunks)


def _pil_open(data: bytes, fmt: str, limits: ImageLimits, corrupt: str) -> Image.Image:
    """Open lazily (header only), with Pillow's decompression-bomb warning raised as an error."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data), formats=_PIL_FORMATS[fmt])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        size = _png_header_size(data) if fmt == "png" else _jpeg_header_size(data)
        if size is not None:
            _check_dimensions(*size, limits)  # our own limit, when it is the stricter one
        shown = f"{size[0]}x{size[1]}" if size else f"more than {Image.MAX_IMAGE_PIXELS:,}"
        raise InvalidImage(
            f"image is {shown} pixels; the limit is {Image.MAX_IMAGE_PIXELS:,} pixels"
        ) from exc
    except Exception as exc:
        raise InvalidImage(corrupt) from exc


def _decode_pil(image: Image.Image, fmt: str) -> np.ndarray:
    with _failures_as(f"{_FORMAT_NAMES[fmt]} file is truncated or corrupt"):
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
            image = ImageOps.exif_transpose(image)
        return _pil_to_grey(image)


def _pil_to_grey(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        return np.asarray(image).astype(np.float32) / 65535.0
    if mode in ("L", "LA", "1", "La"):  # 8-bit grey: the levels themselves (XRayImage.pixels divides)
        return np.ascontiguousarray(np.asarray(image if mode == "L" else image.getchannel(0).convert("L")))
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    return (rgb @ _LUMA) / 255.0


@dataclass(frozen=True)
class _PngChunks:
    """What the chunk walk found: IHDR's data, the first run of consecutive IDAT chunks (all that
    Pillow reads), the eXIf orientation if any."""

    ihdr: bytes
    idat: tuple[memoryview, ...]
    orientation: int | None


def _check_png_chunks(data: bytes, corrupt: str) -> _PngChunks:
    """Walk the chunk chain to IEND (cheap: no decompression)."""
    offset, orientation, ihdr = len(PNG_SIGNATURE), None, b""
    idat: list[memoryview] = []
    idat_run_over = False
    view = memoryview(data)
    while True:
        if offset + 12 > len(data):
            raise InvalidImage(corrupt)
        length, kind = struct.unpack(">I4s", data[offset:offset + 8])
        end = offset + 12 + length
        if end > len(data):
            raise InvalidImage(corrupt)
        if kind == b"IDAT":
            if not idat_run_over:
                idat.append(view[offset + 8:offset + 8 + length])
        else:
            idat_run_over = bool(idat)
        if kind == b"IHDR" and not ihdr:
            ihdr = data[offset + 8:offset + 8 + length]
        elif kind == b"eXIf":
            orientation = _exif_orientation(data[offset + 8:offset + 8 + length])
        elif kind == b"IEND":
            if not idat or len(ihdr) != 13:
                raise InvalidImage(corrupt)
            return _PngChunks(ihdr, tuple(idat), orientation)
        offset = end


def _check_png_stream(chunks: _PngChunks) -> None:
    """Refuse a PNG whose compressed stream holds fewer rows than its header says."""
    try:
        problem = png_stream.shortfall(chunks.ihdr, chunks.idat)
    except png_stream.CorruptStream as exc:
        raise InvalidImage("PNG file is truncated or corrupt") from exc
    if problem is not None:
        raise InvalidImage(problem)


def _exif_orientation(raw: bytes) -> int | None:
    try:
        exif = Image.Exif()
        exif.load(raw)
        value = exif.get(_EXIF_ORIENTATION)
        return int(value) if value is not None else None
    except Exception:  # an unreadable EXIF block only loses the orientation
        return None


def _png_header_size(data: bytes) -> tuple[int, int] | None:
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _jpeg_segments(data: bytes) -> Iterator[tuple[int, int, int]]:
    """Yield (marker, segment start, segment end) for the markers before the first scan's data."""
    offset = 2
    while offset + 4 <= len(data):
        if data[offset] != 0xFF:
            return
        marker = data[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # standalone markers
            offset += 2
            continue
        length = struct.unpack(">H", data[offset + 2:offset + 4])[0]
        yield marker, offset + 4, offset + 2 + length
        if marker == 0xDA:
            return
        offset += 2 + length


_SOF_MARKERS = {m for m in range(0xC0, 0xD0) if m not in (0xC4, 0xC8, 0xCC)}


def _jpeg_header_size(data: bytes) -> tuple[int, int] | None:
    for marker, start, end in _jpeg_segments(data):
        if marker in _SOF_MARKERS and end - start >= 5:
            height, width = struct.unpack(">HH", data[start + 1:start + 5])
            return width, height
    return None


def _check_jpeg_structure(data: bytes, corrupt: str) -> None:
    """A frame header, a scan, and an end-of-image marker after the scan (a byte search, no decode)."""
    has_frame, scan_end = False, None
    for marker, _start, end in _jpeg_segments(data):
        has_frame = has_frame or marker in _SOF_MARKERS
        if marker == 0xDA:
            scan_end = end
    if not has_frame or scan_end is None or data.find(b"\xff\xd9", scan_end) < 0:
        raise InvalidImage(corrupt)


# ----------------------------------------------------------------------------------------------
# DICOM (pydicom)
# ----------------------------------------------------------------------------------------------


def _looks_like_raw_dicom(data: bytes) -> bool:
    """A DICOM data set written without the 128-byte preamble and 'DICM' prefix."""
    if len(data) < 8:
        return False
    group, element = struct.unpack("<HH", data[:4])
    if group not in (0x0002, 0x0008) or element > 0x1000:
        return False
    if data[4:6] in _EXPLICIT_VRS:
        return True
    implicit_length = struct.unpack("<I", data[4:8])[0]
    return implicit_length <= len(data) - 8


def _open_dicom(data: bytes, limits: ImageLimits) -> _Opened:
    import pydicom

    has_prefix = data[DICOM_PREFIX_OFFSET:DICOM_PREFIX_OFFSET + 4] == DICOM_PREFIX
    _refuse_deflated(data, has_prefix)
    with _failures_as(DICOM_CORRUPT if has_prefix else NOT_AN_IMAGE):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(io.BytesIO(data), force=not has_prefix)
        if not has_prefix and not any(tag in ds for tag in _DICOM_IDENTITY_TAGS):
            raise InvalidImage(NOT_AN_IMAGE)
        if any("End of file reached" in str(w.message) for w in caught):
            raise InvalidImage(DICOM_CORRUPT)  # pydicom reads on past a cut; we do not
    with _failures_as(DICOM_CORRUPT):
        _ensure_transfer_syntax(ds)
        width, height = _validate_dicom_header(ds, limits)
        metadata = _dicom_metadata(ds)
    return _Opened(ImageInfo("dicom", width, height, metadata), ds)


def _refuse_deflated(data: bytes, has_prefix: bool) -> None:
    """Deflated data sets are inflated in one unbounded step by pydicom: refuse them up front."""
    from pydicom.filereader import data_element_generator

    fp = io.BytesIO(data)
    fp.seek(DICOM_PREFIX_OFFSET + 4 if has_prefix else 0)
    uid = ""
    try:
        for elem in data_element_generator(fp, False, True, stop_when=lambda tag, vr, length: tag.group != 2):
            if elem.tag == 0x00020010:
                uid = bytes(elem.value or b"").decode("ascii", "replace").strip("\0 ")
    except Exception:  # a malformed meta group is dcmread's to report
        return
    if uid == _DEFLATED_TS:
        raise InvalidImage(_unsupported_syntax(uid))


def _unsupported_syntax(uid: str) -> str:
    from pydicom.uid import UID

    name = UID(uid).name
    label = f"{uid} ({name})" if name and name != uid else f"{uid} (unknown)"
    return f"DICOM transfer syntax {label} is not supported"


def _ensure_transfer_syntax(ds: Any) -> None:
    """A data set read without file meta gets the transfer syntax it was actually read with."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    if "TransferSyntaxUID" in getattr(ds, "file_meta", {}):
        return
    implicit, little = ds.original_encoding
    uid = {
        (True, True): ImplicitVRLittleEndian,
        (False, True): ExplicitVRLittleEndian,
        (False, False): ExplicitVRBigEndian,
    }.get((bool(implicit), bool(little)), ImplicitVRLittleEndian)
    if getattr(ds, "file_meta", None) is None:
        ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid


def _validate_dicom_header(ds: Any, limits: ImageLimits) -> tuple[int, int]:
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise InvalidImage("DICOM floating-point pixel data is not supported")
        raise InvalidImage(NO_PIXEL_DATA)
    _check_decoder(str(ds.file_meta.TransferSyntaxUID))
    for keyword in ("Rows", "Columns", "BitsAllocated", "PhotometricInterpretation"):
        if ds.get(keyword) in (None, ""):
            raise InvalidImage(f"DICOM image header is incomplete: {keyword} is missing")
    photometric = str(ds.PhotometricInterpretation).strip().upper()
    if photometric not in _SUPPORTED_PHOTOMETRIC:
        raise InvalidImage(f"DICOM photometric interpretation {photometric} is not supported")
    width, height = int(ds.Columns), int(ds.Rows)
    _check_dimensions(width, height, limits)
    _check_native_length(ds, width, height)
    return width, height


def _check_decoder(uid: str) -> None:
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(uid)
    except NotImplementedError as exc:
        raise InvalidImage(_unsupported_syntax(uid)) from exc
    if not decoder.is_available:
        raise InvalidImage(_unsupported_syntax(uid))


def _check_native_length(ds: Any, width: int, height: int) -> None:
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        return
    samples = int(ds.get("SamplesPerPixel") or 1)
    bits = int(ds.BitsAllocated)
    expected = (width * height * samples * bits + 7) // 8  # only the first frame must be there
    if len(ds.PixelData) < expected:
        raise InvalidImage("DICOM pixel data is truncated")


def _dicom_metadata(ds: Any) -> DicomMetadata:
    return DicomMetadata(**{field: _dicom_text(ds, kw) for field, kw in _METADATA_KEYWORDS.items()})


def _dicom_text(ds: Any, keyword: str) -> str | None:
    try:
        value = ds.get(keyword)
    except Exception:  # a malformed optional element must not sink the image
        return None
    if value is None:
        return None
    from pydicom.multival import MultiValue

    text = "\\".join(str(v) for v in value) if isinstance(value, MultiValue | list | tuple) else str(value)
    text = text.strip().strip("\0").strip()
    return text or None


def _decode_dicom(ds: Any) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, pixel_array

    uid = ds.file_meta.TransferSyntaxUID
    with _failures_as(f"DICOM pixel data could not be decoded ({uid.name}); the file may be corrupt"):
        frame = pixel_array(ds, index=0)
    with _failures_as("DICOM pixel values could not be interpreted"):
        photometric = str(ds.PhotometricInterpretation).strip().upper()
        if frame.ndim == 3:  # colour (YBR already converted to RGB by pydicom)
            bits = int(ds.get("BitsStored") or ds.BitsAllocated)
            return (frame.astype(np.float32) @ _LUMA) / float(2**bits - 1)
        values = apply_modality_lut(frame, ds).astype(np.float64)
        pixels = _apply_voi(values, ds)
        return 1.0 - pixels if photometric == "MONOCHROME1" else pixels


def _apply_voi(values: np.ndarray, ds: Any) -> np.ndarray:
    """The first VOI LUT or window, normalised by its output range; min-max without one."""
    try:
        if ds.get("VOILUTSequence"):
            return _apply_voi_lut_sequence(values, ds)
        if "WindowCenter" in ds and "WindowWidth" in ds:
            return _apply_window(values, ds)
    except Exception as exc:  # an unusable window is not worth refusing the image for
        logger.warning("ignoring unusable DICOM VOI LUT/window: %r", exc)
    return _min_max(values)


def _apply_voi_lut_sequence(values: np.ndarray, ds: Any) -> np.ndarray:
    from pydicom.pixels import apply_voi_lut

    lut = np.asarray(ds.VOILUTSequence[0].LUTData, dtype=np.float64)
    indices = np.rint(values).astype(np.int64)  # a LUT is indexed by (integral) modality values
    out = apply_voi_lut(indices, ds, index=0, prefer_lut=True).astype(np.float64)
    return _scale(out, float(lut.min()), float(lut.max()))


def _apply_window(values: np.ndarray, ds: Any) -> np.ndarray:
    from pydicom.pixels import apply_windowing

    out = apply_windowing(values.copy(), ds, index=0)
    # Windowing is monotonic and saturates: its output range is what it gives far outside the window.
    with np.errstate(over="ignore"):
        ends = apply_windowing(np.array([-1e30, 1e30]), ds, index=0)
    return _scale(out, float(np.min(ends)), float(np.max(ends)))


def _min_max(values: np.ndarray) -> np.ndarray:
    return _scale(values, float(values.min()), float(values.max()))


def _scale(values: np.ndarray, low: float, high: float) -> np.ndarray:
    if not np.isfinite(low) or not np.isfinite(high) or high <= low:
        return np.zeros(values.shape, dtype=np.float32)
    return ((values - low) / (high - low)).astype(np.float32)
