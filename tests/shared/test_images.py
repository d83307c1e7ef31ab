"""shared.images on real X-rays (NIH, Kermany) and on DICOM files built from them."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageFile
from pydicom.dataset import Dataset

from shared import png_fast, png_stream
from shared.config import ImageLimits, MiB
from shared.images import (
    DicomMetadata,
    ImageInfo,
    InvalidImage,
    XRayImage,
    inspect_image,
    read_image,
    read_image_file,
    sniff_format,
)
from tests.dicom_factory import DEFAULT_METADATA, dataset_bytes, dicom_from_png, png_pixels
from tests.hostile_corpus import png_bomb, png_rows_cut

LIMITS = ImageLimits()


@pytest.fixture(scope="module")
def nih_png(nih_full_images: list[Path]) -> Path:
    return next(p for p in nih_full_images if Image.open(p).size == (1024, 1024))


@pytest.fixture(scope="module")
def nih_small_png(nih_full_images: list[Path]) -> Path:
    return next(p for p in nih_full_images if Image.open(p).size == (512, 512))


def _png_bytes(image: Image.Image, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **params)
    return buffer.getvalue()


def _jpeg_bytes(image: Image.Image, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95, **params)
    return buffer.getvalue()


def _assert_valid(image: XRayImage) -> None:
    assert image.pixels.dtype == np.float32
    assert image.pixels.ndim == 2
    assert image.pixels.shape == (image.height, image.width) == (image.info.height, image.info.width)
    assert float(image.pixels.min()) >= 0.0 and float(image.pixels.max()) <= 1.0


# -- PNG and JPEG --------------------------------------------------------------------------------


def test_every_nih_full_png_reads_exactly(nih_full_images: list[Path]) -> None:
    assert len(nih_full_images) == 16
    for path in nih_full_images:
        image = read_image_file(path, LIMITS)
        _assert_valid(image)
        expected = np.asarray(Image.open(path), dtype=np.float32) / 255.0
        np.testing.assert_allclose(image.pixels, expected, atol=1e-7)
        assert image.info == ImageInfo("png", expected.shape[1], expected.shape[0], None)
        assert inspect_image(path.read_bytes(), LIMITS) == image.info


def _nih64_with_mode(nih64_dir: Path, mode: str) -> Path:
    for path in sorted((nih64_dir / "images").glob("*.png")):
        if Image.open(path).mode == mode:
            return path
    pytest.skip(f"no {mode} image in nih-64")


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_nih64_colour_pngs_become_luminance(nih64_dir: Path, mode: str) -> None:
    path = _nih64_with_mode(nih64_dir, mode)
    image = read_image(path.read_bytes(), LIMITS)
    _assert_valid(image)
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
    luminance = (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]) / 255.0
    np.testing.assert_allclose(image.pixels, luminance, atol=1e-5)
    assert (image.width, image.height) == (64, 64)


def test_kermany_jpegs(kermany_dir: Path) -> None:
    paths = sorted(kermany_dir.rglob("*.jpeg"))[:20]
    assert paths, "no Kermany JPEGs found"
    for path in paths:
        data = path.read_bytes()
        assert sniff_format(data) == "jpeg"
        image = read_image(data, LIMITS)
        _assert_valid(image)
        with Image.open(path) as reference:
            grey = np.asarray(reference.convert("L"), dtype=np.float32) / 255.0
        assert image.info == inspect_image(data, LIMITS)
        assert image.pixels.shape == grey.shape
        assert float(np.abs(image.pixels - grey).max()) <= 1.5 / 255.0


def test_jpeg_exif_orientation_is_applied(nih_small_png: Path) -> None:
    original = Image.open(nih_small_png).convert("L").crop((0, 0, 400, 200))  # 400 wide, 200 high
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to display
    data = _jpeg_bytes(original, exif=exif.tobytes())
    info = inspect_image(data, LIMITS)
    assert (info.width, info.height) == (200, 400)
    image = read_image(data, LIMITS)
    assert image.pixels.shape == (400, 200)
    expected = np.rot90(np.asarray(original, dtype=np.float32) / 255.0, k=-1)
    assert float(np.abs(image.pixels - expected).mean()) < 0.01
    unrotated_error = float(np.abs(image.pixels - np.rot90(expected, k=2)).mean())
    assert unrotated_error > 0.05  # the wrong rotation is clearly distinguishable


def test_png_exif_orientation_is_applied(nih_small_png: Path) -> None:
    original = Image.open(nih_small_png).convert("L").crop((0, 0, 300, 100))
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 90 degrees counter-clockwise to display
    data = _png_bytes(original, exif=exif.tobytes())
    assert (inspect_image(data, LIMITS).width, inspect_image(data, LIMITS).height) == (100, 300)
    expected = np.rot90(np.asarray(original, dtype=np.float32) / 255.0, k=1)
    np.testing.assert_array_equal(read_image(data, LIMITS).pixels, expected)


def test_16_bit_png_is_scaled_by_65535() -> None:
    ramp = (np.arange(256 * 256, dtype=np.uint32).reshape(256, 256)).astype(np.uint16)
    data = _png_bytes(Image.fromarray(ramp))
    image = read_image(data, LIMITS)
    np.testing.assert_allclose(image.pixels, ramp / 65535.0, atol=1e-7)
    assert len(np.unique(image.pixels)) == 256 * 256  # all 16 bits survive


def test_16_bit_png_from_real_xray(nih_png: Path) -> None:
    values = png_pixels(nih_png).astype(np.uint16) * 257
    image = read_image(_png_bytes(Image.fromarray(values)), LIMITS)
    np.testing.assert_allclose(image.pixels, png_pixels(nih_png) / 255.0, atol=1e-6)


def test_palette_png_uses_the_palette(nih_small_png: Path) -> None:
    indices = png_pixels(nih_small_png)
    palette_image = Image.fromarray(indices, mode="P")
    palette_image.putpalette([v for i in range(256) for v in (255 - i,) * 3])  # an inverting palette
    image = read_image(_png_bytes(palette_image), LIMITS)
    np.testing.assert_allclose(image.pixels, (255 - indices.astype(np.float32)) / 255.0, atol=1e-6)


def test_greyscale_with_alpha_and_one_bit_png(nih_small_png: Path) -> None:
    grey = Image.open(nih_small_png).convert("L")
    la = Image.merge("LA", (grey, Image.new("L", grey.size, 128)))
    np.testing.assert_array_equal(read_image(_png_bytes(la), LIMITS).pixels, np.asarray(grey) / np.float32(255))
    bilevel = grey.convert("1")
    pixels = read_image(_png_bytes(bilevel), LIMITS).pixels
    assert set(np.unique(pixels)) <= {0.0, 1.0}
    np.testing.assert_array_equal(pixels, np.asarray(bilevel, dtype=np.float32))


# -- limits and errors ----------------------------------------------------------------------------


def test_file_size_limit(nih_png: Path, tmp_path: Path) -> None:
    limits = ImageLimits(max_bytes=100 * 1024)
    data = nih_png.read_bytes()
    with pytest.raises(InvalidImage, match=rf"^file is {len(data) / 1024:.0f} KB; the limit is 100 KB$"):
        inspect_image(data, limits)
    with pytest.raises(InvalidImage, match="the limit is 100 KB"):
        read_image_file(nih_png, limits)
    big = tmp_path / "big.dcm"
    big.write_bytes(b"\0" * (70 * MiB))
    with pytest.raises(InvalidImage, match="^file is 70 MB; the limit is 64 MB$"):
        read_image_file(big, LIMITS)


def test_pixel_and_side_limits_use_header_dimensions(nih_png: Path, nih_small_png: Path) -> None:
    with pytest.raises(InvalidImage, match="^image is 1024x1024 pixels; the limit is 1,000,000 pixels$"):
        inspect_image(nih_png.read_bytes(), ImageLimits(max_pixels=1_000_000))
    with pytest.raises(InvalidImage, match="^image is 512x512 pixels; the minimum is 600 pixels per side$"):
        read_image(nih_small_png.read_bytes(), ImageLimits(min_side=600))


def test_pillow_bomb_warning_becomes_an_error_when_our_limit_is_looser() -> None:
    side = 9500  # 90.25 M pixels: over Pillow's 89.5 M warning threshold
    with pytest.raises(InvalidImage, match=f"^image is {side}x{side} pixels; the limit is 89,478,485 pixels$"):
        inspect_image(png_bomb(side), ImageLimits(max_pixels=10**9))


def test_inspect_inflates_but_does_not_decode_pixels(nih_small_png: Path) -> None:
    """A PNG whose compressed data is garbage (chunks and CRCs intact) is refused at inspection: the
    stream is inflated to count its rows (nothing is unfiltered), and the library's error stays chained."""
    data = nih_small_png.read_bytes()
    start = data.find(b"IDAT") - 4
    length = struct.unpack(">I", data[start:start + 4])[0]
    garbage = bytes(np.random.default_rng(3).integers(0, 256, length, dtype=np.uint8))
    chunk = data[start:start + 4] + b"IDAT" + garbage + struct.pack(">I", zlib.crc32(b"IDAT" + garbage))
    broken = data[:start] + chunk + data[start + 12 + length:]
    for reader in (inspect_image, read_image):
        with pytest.raises(InvalidImage, match="^PNG file is truncated or corrupt$") as excinfo:
            reader(broken, LIMITS)
        assert excinfo.value.__cause__ is not None


@pytest.mark.parametrize("closed", [True, False], ids=["stream-closed-early", "stream-cut"])
def test_png_whose_pixel_stream_stops_early_is_refused(nih_small_png: Path, closed: bool,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow alone decodes such a file and fills the missing rows with black: neither the fast
    decoder nor the Pillow fallback may hand those pixels on, and the upload check refuses it."""
    assert not ImageFile.LOAD_TRUNCATED_IMAGES
    short = png_rows_cut(nih_small_png.read_bytes(), 100, closed=closed)
    message = "^PNG image data is truncated: 100 of 512 rows$" if closed else \
        r"^PNG image data is truncated: \d+ of 512 rows$"
    with pytest.raises(InvalidImage, match=message):
        inspect_image(short, LIMITS)
    assert png_fast.decode_grey8(short) is None
    with pytest.raises(InvalidImage, match=message):
        read_image(short, LIMITS)
    monkeypatch.setattr(png_fast, "_unfilter", None)  # the Pillow fallback alone
    with pytest.raises(InvalidImage, match=message):
        read_image(short, LIMITS)


def test_pillow_only_pngs_and_interlaced_ones_are_checked_too(nih_small_png: Path) -> None:
    """A 16-bit PNG (never the fast path) whose stream stops early; an interlaced one's count."""
    grey = np.asarray(Image.open(nih_small_png).convert("L"), dtype=np.uint16) * 257
    sixteen = _png_bytes(Image.fromarray(grey))
    assert Image.open(io.BytesIO(sixteen)).mode.startswith("I;16")
    short = png_rows_cut(sixteen, 40)
    for reader in (inspect_image, read_image):
        with pytest.raises(InvalidImage, match="^PNG image data is truncated: 40 of 512 rows$"):
            reader(short, LIMITS)
    assert read_image(sixteen, LIMITS).info.width == 512  # the whole file still reads
    interlaced = struct.pack(">IIBBBBB", 512, 512, 8, 0, 0, 0, 1)  # Adam7: seven passes, 263,104 bytes
    assert png_stream.shortfall(interlaced, [zlib.compress(b"\0" * 1000)]) == \
        "PNG image data is truncated: 1,000 of 263,104 bytes of its interlaced rows"
    assert png_stream.shortfall(interlaced, [zlib.compress(b"\0" * 263_104)]) is None


def test_sniffing_ignores_names_and_refuses_unknown(nih_small_png: Path, tmp_path: Path) -> None:
    misnamed = tmp_path / "scan.dcm"
    misnamed.write_bytes(nih_small_png.read_bytes())
    assert read_image_file(misnamed, LIMITS).info.format == "png"
    with pytest.raises(InvalidImage, match="^not a PNG, JPEG or DICOM file$"):
        sniff_format(b"GIF89a" + b"\0" * 100)
    with pytest.raises(InvalidImage, match="^the file is empty$"):
        sniff_format(b"")
    with pytest.raises(InvalidImage, match="cannot read missing.png"):
        read_image_file(tmp_path / "missing.png", LIMITS)


# -- DICOM -----------------------------------------------------------------------------------------


def _expected(png: Path) -> np.ndarray:
    return png_pixels(png).astype(np.float32) / 255.0


def _min_max(png: Path) -> np.ndarray:
    values = png_pixels(png).astype(np.float32)
    return (values - values.min()) / (values.max() - values.min())


def test_dicom_monochrome2_8_bit_without_window_is_min_max_scaled(nih_full_images: list[Path]) -> None:
    png = next(p for p in nih_full_images if png_pixels(p).max() < 250)  # so min-max differs from /255
    data = dicom_from_png(png)
    assert sniff_format(data) == "dicom"
    image = read_image(data, LIMITS)
    _assert_valid(image)
    np.testing.assert_allclose(image.pixels, _min_max(png), atol=1e-6)
    assert float(np.abs(image.pixels - _expected(png)).max()) > 0.005


def test_dicom_monochrome2_with_full_window_matches_png(nih_png: Path) -> None:
    image = read_image(dicom_from_png(nih_png, window="full"), LIMITS)
    np.testing.assert_allclose(image.pixels, _expected(nih_png), atol=1e-6)


@pytest.mark.parametrize("window", [None, "full"])
def test_dicom_monochrome1_is_inverted_back(nih_png: Path, window: str | None) -> None:
    data = dicom_from_png(nih_png, photometric="MONOCHROME1", window=window)
    assert pydicom.dcmread(io.BytesIO(data)).pixel_array[0, 0] == 255 - png_pixels(nih_png)[0, 0]
    reference = _expected(nih_png) if window else _min_max(nih_png)
    np.testing.assert_allclose(read_image(data, LIMITS).pixels, reference, atol=1e-6)


@pytest.mark.parametrize("function", ["LINEAR_EXACT", "LINEAR"])
def test_dicom_16_bit_rescale_and_window_map_back(nih_png: Path, function: str) -> None:
    data = dicom_from_png(nih_png, bits=16, rescale=(0.5, -1024.0), window="full", window_function=function)
    ds = pydicom.dcmread(io.BytesIO(data))
    assert ds.BitsAllocated == 16 and float(ds.RescaleSlope) == 0.5 and float(ds.RescaleIntercept) == -1024
    image = read_image(data, LIMITS)
    np.testing.assert_allclose(image.pixels, _expected(nih_png), atol=1e-3)


def test_dicom_voi_lut_sequence_is_applied(nih_small_png: Path) -> None:
    ds = pydicom.dcmread(io.BytesIO(dicom_from_png(nih_small_png)))
    item = Dataset()
    item.LUTDescriptor = [256, 0, 16]
    item.add_new("LUTData", "US", [(255 - i) * 257 for i in range(256)])  # an inverting VOI LUT
    ds.VOILUTSequence = [item]
    image = read_image(dataset_bytes(ds), LIMITS)
    np.testing.assert_allclose(image.pixels, 1.0 - _expected(nih_small_png), atol=1e-6)


def test_dicom_unusable_window_falls_back_to_min_max(nih_small_png: Path) -> None:
    data = dicom_from_png(nih_small_png, window=(100.0, 0.0), window_function="LINEAR")
    np.testing.assert_allclose(read_image(data, LIMITS).pixels, _min_max(nih_small_png), atol=1e-6)


def test_dicom_jpeg_baseline(nih_png: Path) -> None:
    data = dicom_from_png(nih_png, compressed="jpeg-baseline", window="full")
    assert pydicom.dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit
    assert inspect_image(data, LIMITS).width == 1024
    difference = np.abs(read_image(data, LIMITS).pixels - _expected(nih_png))
    assert float(difference.mean()) < 0.005 and float(difference.max()) < 0.1


@pytest.mark.parametrize("compressed", ["jpeg2000-lossless", "rle"])
def test_dicom_lossless_compression_is_exact(nih_small_png: Path, compressed: str) -> None:
    data = dicom_from_png(nih_small_png, bits=16, compressed=compressed, window="full")  # type: ignore[arg-type]
    assert pydicom.dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID.is_compressed
    np.testing.assert_allclose(read_image(data, LIMITS).pixels, _expected(nih_small_png), atol=1e-6)


@pytest.mark.parametrize("compressed", [None, "jpeg-baseline"])
def test_dicom_multi_frame_gives_the_first_frame(nih_small_png: Path, compressed: str | None) -> None:
    data = dicom_from_png(nih_small_png, frames=3, compressed=compressed, window="full")  # type: ignore[arg-type]
    assert int(pydicom.dcmread(io.BytesIO(data)).NumberOfFrames) == 3
    image = read_image(data, LIMITS)
    assert image.pixels.shape == (512, 512)
    assert float(np.abs(image.pixels - _expected(nih_small_png)).mean()) < 0.005


def test_dicom_without_preamble_is_read(nih_small_png: Path) -> None:
    data = dicom_from_png(nih_small_png, preamble=False, window="full")
    assert data[128:132] != b"DICM"
    assert sniff_format(data) == "dicom"
    image = read_image(data, LIMITS)
    np.testing.assert_allclose(image.pixels, _expected(nih_small_png), atol=1e-6)
    assert image.info.metadata is not None and image.info.metadata.patient_id == "TEST-0001"


def test_dicom_metadata(nih_small_png: Path) -> None:
    data = dicom_from_png(nih_small_png, metadata={"PatientName": "Doe^Jane", "BodyPartExamined": None})
    uid = str(pydicom.dcmread(io.BytesIO(data)).StudyInstanceUID)
    info = inspect_image(data, LIMITS)
    assert info.format == "dicom" and (info.width, info.height) == (512, 512)
    assert info.metadata == DicomMetadata(
        patient_id=DEFAULT_METADATA["PatientID"],
        patient_name="Doe^Jane",
        study_instance_uid=uid,
        accession_number=DEFAULT_METADATA["AccessionNumber"],
        study_date=DEFAULT_METADATA["StudyDate"],
        modality="DX",
        view_position="PA",
        body_part_examined=None,
    )
    assert info.metadata.as_dict()["patient_name"] == "Doe^Jane"
    assert read_image(data, LIMITS).info == info


def test_dicom_dimension_limits_come_from_the_header(nih_png: Path) -> None:
    data = dicom_from_png(nih_png)
    with pytest.raises(InvalidImage, match="^image is 1024x1024 pixels; the limit is 1,000,000 pixels$"):
        inspect_image(data, ImageLimits(max_pixels=1_000_000))


def test_dicom_corrupt_compressed_pixels_fail_on_read_only(nih_small_png: Path) -> None:
    ds = pydicom.dcmread(io.BytesIO(dicom_from_png(nih_small_png, compressed="jpeg-baseline")))
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8\xff\xe0" + b"\x00" * 300 + b"\xff\xd9"])
    data = dataset_bytes(ds)
    assert inspect_image(data, LIMITS).width == 512
    with pytest.raises(InvalidImage, match="^DICOM pixel data could not be decoded") as excinfo:
        read_image(data, LIMITS)
    assert excinfo.value.__cause__ is not None


def test_8bit_grey_png_goes_through_the_fast_decoder_with_pillows_pixels(nih_png: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    if not png_fast.AVAILABLE:
        pytest.skip(png_fast.describe())
    data = nih_png.read_bytes()
    calls: list[int] = []
    real = png_fast.decode_grey8
    monkeypatch.setattr(png_fast, "decode_grey8", lambda data: calls.append(len(data)) or real(data))
    image = read_image(data, LIMITS)
    assert calls == [len(data)]
    assert image.source.dtype == np.uint8
    np.testing.assert_array_equal(image.source, np.asarray(Image.open(nih_png)))
    monkeypatch.setattr(png_fast, "decode_grey8", lambda data: None)  # declined: Pillow decodes it
    fallback = read_image(data, LIMITS)
    np.testing.assert_array_equal(fallback.source, image.source)
    np.testing.assert_array_equal(fallback.pixels, image.pixels)
