"""The X-ray and its heatmap layers, served by the app from storage: PNG as stored, DICOM through the
display picture the worker made (never decoded by the web), heatmaps validated against FINDINGS,
404s for anything missing."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import shared.images
from shared.config import Settings
from shared.gradcam import cam_sheet_png, heatmap_layer_png
from shared.models import Batch, Finding
from shared.storage import LocalStorage
from tests.web.support import add_study, make_app, mark_done, session_for, upload

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def dicom_from_png(png: bytes, *, monochrome1: bool = False) -> bytes:
    """A real X-ray wrapped as a DICOM file (CR, MONOCHROME2 or inverted MONOCHROME1)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian, generate_uid

    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.uint16) * 16  # 12-bit
    if monochrome1:
        pixels = 4095 - pixels
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "P-0001"
    ds.PatientName = "DOE^JANE"
    ds.AccessionNumber = "ACC-42"
    ds.StudyDate = "20250106"
    ds.Modality = "CR"
    ds.ViewPosition = "PA"
    ds.BodyPartExamined = "CHEST"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.astype("<u2").tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.fixture
def png(nih_full_images: list[Path]) -> bytes:
    return nih_full_images[0].read_bytes()


def test_png_original_is_served_as_stored(settings: Settings, png: bytes) -> None:
    app, _ = make_app(settings)
    client = app.test_client()
    study_id = upload(client, [(png, "a.png")]).get_json()["accepted"][0]["id"]
    response = client.get(f"/studies/{study_id}/image")
    assert response.status_code == 200 and response.mimetype == "image/png"
    assert response.data == png
    assert "private" in response.headers["Cache-Control"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("monochrome1", [False, True])
def test_dicom_is_shown_through_its_display_picture(settings: Settings, png: bytes, monochrome1: bool,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    app, _ = make_app(settings)
    client = app.test_client()
    body = upload(client, [(dicom_from_png(png, monochrome1=monochrome1), "chest.dcm")]).get_json()
    study_id = body["accepted"][0]["id"]
    detail = client.get(f"/api/v1/studies/{study_id}").get_json()
    assert detail["format"] == "dicom"
    assert detail["dicom"]["patient_name"] == "DOE^JANE" and detail["dicom"]["accession_number"] == "ACC-42"
    assert detail["dicom"]["body_part_examined"] == "CHEST"

    # Until the worker has made its display picture, there is nothing to show (and nothing decoded here).
    waiting = client.get(f"/studies/{study_id}/image")
    assert waiting.status_code == 404 and "once the study is diagnosed" in waiting.get_data(as_text=True)
    mark_done(settings, study_id)  # with the display picture the worker stores

    def no_decoding(*_: object, **__: object) -> None:
        raise AssertionError("the web decoded a DICOM to show it")

    monkeypatch.setattr(shared.images, "read_image", no_decoding)
    response = client.get(f"/studies/{study_id}/image")
    assert response.status_code == 200 and response.mimetype == "image/png"
    assert response.data.startswith(PNG_SIGNATURE)
    shown = np.asarray(Image.open(io.BytesIO(response.data)), dtype=np.float64)
    original = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64)
    assert shown.shape == original.shape
    # Same picture, the right way round (MONOCHROME1 inverted back): strongly positively correlated.
    assert np.corrcoef(shown.ravel(), original.ravel())[0, 1] > 0.99
    again = client.get(f"/studies/{study_id}/image", headers={"If-None-Match": response.headers["ETag"]})
    assert again.status_code == 304 and again.data == b""


def _study_with_heatmap(settings: Settings, heatmap: bytes | None, label: str = "Effusion") -> int:
    storage = LocalStorage(settings.storage_dir)
    with session_for(settings) as session:
        batch = Batch()
        session.add(batch)
        study = add_study(session, batch)
        path = storage.put_cam_sheet(study.id, heatmap) if heatmap is not None else None
        session.add(Finding(study=study, label=label, probability=0.8, threshold=0.4, positive=True,
                            heatmap_path=path))
        session.add(Finding(study=study, label="Mass", probability=0.1, threshold=0.4, positive=False))
        session.commit()
        return study.id


def _heatmap_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGBA", (256, 256), (255, 0, 0, 128)).save(out, format="PNG")
    return out.getvalue()


def _cam() -> np.ndarray:
    cam = np.zeros((7, 7), np.float32)
    cam[2, 4], cam[3, 4] = 1.0, 0.6
    return cam


def _sheet(effusion: np.ndarray) -> bytes:
    """A study's CAM sheet as the worker stores it (here two maps; the worker's has all 14)."""
    return cam_sheet_png({"Atelectasis": np.ones((7, 7)), "Effusion": effusion})


def test_each_finding_gets_its_own_map_from_the_one_sheet(settings: Settings) -> None:
    app, _ = make_app(settings)
    storage = LocalStorage(settings.storage_dir)
    maps = {"Effusion": _cam(), "Mass": _cam()[::-1, ::-1]}
    with session_for(settings) as session:
        batch = Batch()
        session.add(batch)
        study = add_study(session, batch)
        path = storage.put_cam_sheet(study.id, cam_sheet_png(maps))
        session.add_all(Finding(study=study, label=label, probability=0.8, threshold=0.4, positive=True,
                                heatmap_path=path) for label in maps)
        session.commit()
        study_id = study.id
    client = app.test_client()
    etags = set()
    for label, cam in maps.items():
        response = client.get(f"/studies/{study_id}/heatmaps/{label}.png")
        assert response.status_code == 200
        expected = np.asarray(Image.open(io.BytesIO(heatmap_layer_png(cam)))).astype(int)
        served = np.asarray(Image.open(io.BytesIO(response.data))).astype(int)
        assert np.max(np.abs(served - expected)) <= 1, label
        etags.add(response.headers["ETag"])
    assert len(etags) == 2  # one stored file, two layers: two tags


def test_heatmap_layer_is_rendered_from_the_stored_cam(settings: Settings) -> None:
    app, _ = make_app(settings)
    study_id = _study_with_heatmap(settings, _sheet(_cam()))
    response = app.test_client().get(f"/studies/{study_id}/heatmaps/Effusion.png")
    assert response.status_code == 200 and response.mimetype == "image/png"
    # The layer the worker used to store, rendered from the 16-bit CAM (within one level).
    expected = np.asarray(Image.open(io.BytesIO(heatmap_layer_png(_cam())))).astype(int)
    served = np.asarray(Image.open(io.BytesIO(response.data)))
    assert served.shape == (256, 256, 4)
    assert np.max(np.abs(served.astype(int) - expected)) <= 1
    assert response.headers["Cache-Control"] in ("private, max-age=86400", "max-age=86400, private")


def test_heatmap_has_a_strong_etag_and_answers_304(settings: Settings) -> None:
    app, _ = make_app(settings)
    study_id = _study_with_heatmap(settings, _sheet(_cam()))
    client = app.test_client()
    url = f"/studies/{study_id}/heatmaps/Effusion.png"
    first = client.get(url)
    etag = first.headers["ETag"]
    assert etag.startswith('"') and not etag.startswith("W/")
    again = client.get(url, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.data == b""
    assert again.headers["ETag"] == etag and "private" in again.headers["Cache-Control"]
    assert client.get(url, headers={"If-None-Match": '"something-else"'}).status_code == 200
    # Another map, another tag.
    other = _study_with_heatmap(settings, _sheet(_cam()[::-1]))
    assert client.get(f"/studies/{other}/heatmaps/Effusion.png").headers["ETag"] != etag


def test_unreadable_heatmap_is_404(settings: Settings) -> None:
    app, _ = make_app(settings)
    study_id = _study_with_heatmap(settings, b"neither a CAM nor a PNG")
    assert app.test_client().get(f"/studies/{study_id}/heatmaps/Effusion.png").status_code == 404


@pytest.mark.parametrize("path", [
    "/studies/{id}/heatmaps/NotAFinding.png",       # label not in FINDINGS
    "/studies/{id}/heatmaps/..%2F..%2Fsecret.png",  # traversal attempt
    "/studies/{id}/heatmaps/Mass.png",              # finding without a heatmap
    "/studies/{id}/heatmaps/Edema.png",             # no such finding row
    "/studies/999/heatmaps/Effusion.png",           # no such study
    "/studies/999/image",
])
def test_heatmap_and_image_404s(settings: Settings, path: str) -> None:
    app, _ = make_app(settings)
    study_id = _study_with_heatmap(settings, _sheet(_cam()))
    assert app.test_client().get(path.format(id=study_id)).status_code == 404


def test_missing_files_are_404_not_500(settings: Settings) -> None:
    app, _ = make_app(settings)
    study_id = _study_with_heatmap(settings, _sheet(_cam()))
    for path in (settings.storage_dir / "heatmaps").rglob("*.png"):
        path.unlink()
    client = app.test_client()
    assert client.get(f"/studies/{study_id}/heatmaps/Effusion.png").status_code == 404
    assert client.get(f"/studies/{study_id}/image").status_code == 404  # original never stored
