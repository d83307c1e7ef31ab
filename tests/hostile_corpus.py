"""Hostile and broken uploads, each with the message a clinician should see.

    from tests.hostile_corpus import hostile_cases
    for case in hostile_cases():
        ...  # case.name, case.filename, case.data, case.expected (a substring of the message)

Every case is self-contained (no provided data needed) and is refused by BOTH
`shared.images.inspect_image` and `shared.images.read_image` with the default `ImageLimits()`; the
expected messages assume those defaults (64 MB, 50,000,000 pixels, 64 pixels per side). File names
deliberately lie about the content where that is the point: the reader must sniff the bytes.
"""

from __future__ import annotations

import io
import struct
import zlib
from functools import lru_cache
from typing import NamedTuple

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import MPEG2MPML, DeflatedExplicitVRLittleEndian

from tests.dicom_factory import _file_meta, dataset_bytes, dicom_from_array

NOT_AN_IMAGE = "not a PNG, JPEG or DICOM file"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BOMB_SIDE = 30000
NESTING_DEPTH = 3000


class HostileCase(NamedTuple):
    name: str
    filename: str
    data: bytes
    expected: str  # a substring of InvalidImage's message


def hostile_cases() -> list[HostileCase]:
    """All cases, in a stable order (cheap after the first call: the bomb is cached)."""
    return [
        HostileCase("empty", "empty.png", b"", "the file is empty"),
        HostileCase("text_renamed_png", "notes.png", b"Patient seen today, chest clear.\n" * 20, NOT_AN_IMAGE),
        HostileCase("html_renamed_png", "xray.png", _html(), NOT_AN_IMAGE),
        HostileCase("pdf_renamed_jpg", "report.jpg", _pdf(), NOT_AN_IMAGE),
        HostileCase("gif_renamed_png", "anim.png", _gif(), NOT_AN_IMAGE),
        HostileCase("random_bytes_dcm", "scan.dcm", _random_bytes(4096), NOT_AN_IMAGE),
        HostileCase("truncated_png", "cut.png", _truncate(_png(_noise(256))), "PNG file is truncated or corrupt"),
        HostileCase("png_stream_stops_early", "short.png", png_rows_cut(_png(_noise(256)), 100),
                    "PNG image data is truncated: 100 of 256 rows"),
        HostileCase("truncated_jpeg", "cut.jpg", _truncate(_jpeg(_noise(256))), "JPEG file is truncated or corrupt"),
        HostileCase(
            "png_decompression_bomb",
            "bomb.png",
            png_bomb(),
            f"image is {BOMB_SIDE}x{BOMB_SIDE} pixels; the limit is 50,000,000 pixels",
        ),
        HostileCase(
            "jpeg_huge_dimensions",
            "huge.jpg",
            _jpeg_with_size(_jpeg(_noise(128)), 40000, 40000),
            "image is 40000x40000 pixels; the limit is 50,000,000 pixels",
        ),
        HostileCase(
            "dicom_huge_dimensions",
            "huge.dcm",
            _dicom_huge_dimensions(),
            "image is 40000x40000 pixels; the limit is 50,000,000 pixels",
        ),
        HostileCase("png_1x1", "dot.png", _png(np.zeros((1, 1), np.uint8)), "image is 1x1 pixels; the minimum is 64"),
        HostileCase("jpeg_too_narrow", "strip.jpg", _jpeg(_noise(256)[:32]), "image is 256x32 pixels; the minimum"),
        HostileCase("dicom_no_pixel_data", "report.dcm", _dicom_without_pixels(), "DICOM file has no pixel data"),
        HostileCase("dicom_missing_dicm", "image.dcm", _dicom_missing_prefix(), NOT_AN_IMAGE),
        HostileCase(
            "dicom_garbage_after_header", "broken.dcm", _dicom_garbage_body(), "DICOM file is truncated or corrupt"
        ),
        HostileCase("dicom_truncated_pixels", "cut.dcm", _dicom_truncated(), "DICOM pixel data is truncated"),
        HostileCase(
            "dicom_unsupported_transfer_syntax",
            "video.dcm",
            _dicom_mpeg2(),
            f"DICOM transfer syntax {MPEG2MPML} (MPEG2 Main Profile / Main Level) is not supported",
        ),
        HostileCase(
            "dicom_deflated",
            "deflated.dcm",
            _dicom_deflated(),
            f"DICOM transfer syntax {DeflatedExplicitVRLittleEndian} (Deflated Explicit VR Little Endian) "
            "is not supported",
        ),
        HostileCase("dicom_deeply_nested", "nested.dcm", _dicom_deeply_nested(), "DICOM file is nested too deeply"),
    ]


# -- building blocks ---------------------------------------------------------------------------


def _noise(side: int) -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.integers(0, 256, size=(side, side), dtype=np.uint8)


def _random_bytes(n: int) -> bytes:
    return b"\x13\x37" + np.random.default_rng(11).integers(0, 256, size=n, dtype=np.uint8).tobytes()


def _truncate(data: bytes) -> bytes:
    return data[: len(data) * 2 // 3]


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _gif() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(_noise(128)).save(buffer, format="GIF")
    return buffer.getvalue()


def _pdf() -> bytes:
    return b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n%%EOF\n"


def _html() -> bytes:
    return b"<!DOCTYPE html>\n<html><head><title>X-ray</title></head><body><img src='x.png'></body></html>\n"


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_rows_cut(data: bytes, rows: int, closed: bool = True) -> bytes:
    """The PNG `data` with a pixel stream that stops early: a properly closed zlib stream of its first
    `rows` rows (`closed`; non-interlaced files only), or its own stream cut off at the same share of
    its length. Every chunk and CRC stays valid: only the stream's length gives it away."""
    offset, chunks = len(PNG_SIGNATURE), []
    while offset < len(data):
        length, kind = struct.unpack(">I4s", data[offset:offset + 8])
        chunks.append((kind, data[offset + 8:offset + 8 + length]))
        offset += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", chunks[0][1][:10])
    row_bytes = 1 + (width * {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour] * depth + 7) // 8
    stream = b"".join(body for kind, body in chunks if kind == b"IDAT")
    if closed:
        short = zlib.compress(zlib.decompress(stream)[: rows * row_bytes])
    else:
        short = stream[: len(stream) * rows // height]
    first = next(i for i, (kind, _) in enumerate(chunks) if kind == b"IDAT")
    kept = [(kind, body) for kind, body in chunks if kind != b"IDAT"]
    kept.insert(first, (b"IDAT", short))
    return PNG_SIGNATURE + b"".join(_png_chunk(kind, body) for kind, body in kept)


@lru_cache(maxsize=1)
def png_bomb(side: int = BOMB_SIDE) -> bytes:
    """A complete, valid 1-bit PNG of side x side black pixels: ~100 KB that would decode to 900 MB."""
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    rows_per_block = 1000
    parts = [compressor.compress(row * min(rows_per_block, side - i)) for i in range(0, side, rows_per_block)]
    idat = b"".join(parts) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _jpeg_with_size(data: bytes, width: int, height: int) -> bytes:
    """Rewrite the frame header's dimensions (the rest of the file is a real, small JPEG)."""
    sof = data.find(b"\xff\xc0")
    return data[: sof + 5] + struct.pack(">HH", height, width) + data[sof + 9 :]


def _dicom_dataset() -> Dataset:
    ds = Dataset()
    ds.PatientID = "HOSTILE-1"
    ds.PatientName = "Hostile^Case"
    ds.Modality = "DX"
    return ds


def _dicom_without_pixels() -> bytes:
    return dataset_bytes(_dicom_dataset())


def _dicom_huge_dimensions() -> bytes:
    small = dicom_from_array(_noise(64))
    at = small.find(b"\x28\x00\x10\x00US\x02\x00")  # (0028,0010) Rows, explicit VR little endian
    if at < 0:
        raise RuntimeError("Rows element not found")
    body = bytearray(small)
    body[at + 8 : at + 10] = struct.pack("<H", 40000)
    body[at + 18 : at + 20] = struct.pack("<H", 40000)  # (0028,0011) Columns follows Rows
    return bytes(body)


def _dicom_missing_prefix() -> bytes:
    data = dicom_from_array(_noise(64))
    return b"GARBAGE-PREAMBLE".ljust(128, b"\x01") + b"NOPE" + data[132:]


def _dicom_garbage_body() -> bytes:
    header = dataset_bytes(_dicom_dataset())
    return header + b"\x28\x00\x10\x00US\x02\x00\x00" + b"\xff" * 64


def _dicom_truncated() -> bytes:
    data = dicom_from_array(_noise(256))
    return data[: len(data) - 256 * 100]


def _dicom_mpeg2() -> bytes:
    ds = _dicom_dataset()
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 256, 256, 1
    ds.PhotometricInterpretation, ds.BitsAllocated, ds.BitsStored, ds.HighBit = "MONOCHROME2", 8, 8, 7
    ds.PixelRepresentation = 0
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 400])
    ds["PixelData"].VR = "OB"
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.1.1", "1.2.3.4.5"
    _file_meta(ds, MPEG2MPML)
    return dataset_bytes(ds)


def _dicom_deflated() -> bytes:
    ds = _dicom_dataset()
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 64, 64, 1
    ds.PhotometricInterpretation, ds.BitsAllocated, ds.BitsStored, ds.HighBit = "MONOCHROME2", 8, 8, 7
    ds.PixelRepresentation = 0
    ds.PixelData = _noise(64).tobytes()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.1.1", "1.2.3.4.6"
    _file_meta(ds, DeflatedExplicitVRLittleEndian)
    return dataset_bytes(ds)


def _dicom_deeply_nested(depth: int = NESTING_DEPTH) -> bytes:
    """A Content Sequence nested `depth` levels deep (undefined lengths), after a valid header."""
    undefined = b"\xff\xff\xff\xff"
    open_level = b"\x40\x00\x30\xa7" + b"SQ\x00\x00" + undefined + b"\xfe\xff\x00\xe0" + undefined
    close_level = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    return dataset_bytes(_dicom_dataset()) + open_level * depth + close_level * depth
