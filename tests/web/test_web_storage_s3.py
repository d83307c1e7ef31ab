"""The web on an object store (a real S3 server, SeaweedFS): uploads land in it, duplicates are still
found, images and heatmaps are served with the same URLs, ETags and caching as from a local folder;
and while the store is down the web says so (503, a reason, Retry-After) and records nothing."""

from __future__ import annotations

import hashlib
import io
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select

from shared.config import Settings
from shared.gradcam import cam_sheet_png
from shared.models import Batch, Finding, Study
from shared.storage import LocalStorage, Storage
from tests.conftest import S3_TEST_BUCKET, S3Place
from tests.seaweed import seaweed_server, unique_prefix
from tests.web.support import make_app, session_for, upload

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _xray_png(seed: int, side: int = 160) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def _add_heatmap(settings: Settings, storage: Storage, study_id: int) -> None:
    """What a worker leaves: the CAM sheet in storage, a finding row pointing at it."""
    cam = np.zeros((7, 7), np.float32)
    cam[2, 4] = 1.0
    path = storage.put_cam_sheet(study_id, cam_sheet_png({"Effusion": cam}))
    with session_for(settings) as session:
        session.add(Finding(study_id=study_id, label="Effusion", probability=0.8, threshold=0.4, positive=True,
                            heatmap_path=path))
        session.commit()


def _serve(settings: Settings, storage: Storage, png: bytes) -> dict[str, Any]:
    """Upload `png`, add its heatmap, fetch both: what a browser sees."""
    app, producer = make_app(settings)
    client = app.test_client()
    response = upload(client, [(png, "chest.png")])
    assert response.status_code == 201, response.get_json()
    study_id = response.get_json()["accepted"][0]["id"]
    _add_heatmap(settings, storage, study_id)
    image = client.get(f"/studies/{study_id}/image")
    heatmap = client.get(f"/studies/{study_id}/heatmaps/Effusion.png")
    ranged = client.get(f"/studies/{study_id}/image", headers={"Range": "bytes=0-7"})
    cached = client.get(f"/studies/{study_id}/image", headers={"If-None-Match": image.headers["ETag"]})
    again = upload(client, [(png, "same-bytes.png")]).get_json()
    return {"study_id": study_id, "image": image, "heatmap": heatmap, "ranged": ranged, "cached": cached,
            "again": again, "sent": producer.sent}


def test_same_urls_etags_and_caching_as_a_local_folder(settings: Settings, tmp_path: Any, s3_place: S3Place) -> None:
    png = _xray_png(1)
    local_settings = settings.with_overrides(database_url=f"sqlite:///{tmp_path / 'local.db'}")
    local = _serve(local_settings, LocalStorage(local_settings.storage_dir), png)
    remote = _serve(s3_place.settings(settings), s3_place.storage(), png)

    digest = hashlib.sha256(png).hexdigest()
    for served in (local, remote):
        assert served["image"].status_code == 200 and served["image"].data == png
        assert served["image"].mimetype == "image/png"
        assert served["image"].headers["ETag"] == f'"{digest}"'
        assert served["heatmap"].status_code == 200 and served["heatmap"].data.startswith(PNG_SIGNATURE)
        assert served["ranged"].status_code == 206 and served["ranged"].data == png[:8]
        assert served["cached"].status_code == 304 and served["cached"].data == b""
        # The same bytes again: found as a duplicate of the first study, not stored a second time.
        assert served["again"]["accepted"][0]["duplicate"] is True
        assert served["again"]["accepted"][0]["id"] == served["study_id"]
    for name in ("image", "heatmap", "cached"):
        for header in ("ETag", "Cache-Control"):
            assert local[name].headers.get(header) == remote[name].headers.get(header), (name, header)
    assert remote["image"].headers["Content-Length"] == str(len(png))
    assert s3_place.server.keys(S3_TEST_BUCKET, s3_place.prefix) == sorted([
        f"{s3_place.prefix}/originals/{digest[:2]}/{digest}.png",
        f"{s3_place.prefix}/heatmaps/00000/{remote['study_id']}.png",
    ])


def _count(settings: Settings, model: type) -> int:
    with session_for(settings) as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


@pytest.mark.slow
def test_store_down_means_503_with_a_reason_and_nothing_recorded(settings: Settings) -> None:
    with seaweed_server() as server:
        bucket, prefix = server.make_bucket("outage"), unique_prefix()
        settings = server.settings(settings, bucket, prefix)
        storage = server.storage(bucket, prefix)
        app, producer = make_app(settings)
        client = app.test_client()
        first = upload(client, [(_xray_png(2), "first.png")])
        assert first.status_code == 201
        study_id = first.get_json()["accepted"][0]["id"]
        _add_heatmap(settings, storage, study_id)
        before = (_count(settings, Batch), _count(settings, Study), len(producer.sent))

        server.stop()
        try:
            refused = upload(client, [(_xray_png(3), "during.png"), (_xray_png(4), "during2.png")])
            assert refused.status_code == 503
            assert refused.headers["Retry-After"] == "30"
            error = refused.get_json()["error"]
            assert f"the object store at {server.endpoint_url} is unreachable" in error
            assert "no study of this upload was saved" in error
            assert (_count(settings, Batch), _count(settings, Study), len(producer.sent)) == before
            for url in (f"/studies/{study_id}/image", f"/studies/{study_id}/heatmaps/Effusion.png"):
                response = client.get(url)
                assert response.status_code == 503, url
                assert response.headers["Retry-After"] == "30"
                assert "is unreachable" in response.get_data(as_text=True)
        finally:
            server.start()

        assert client.get(f"/studies/{study_id}/image").status_code == 200
        assert client.get(f"/studies/{study_id}/heatmaps/Effusion.png").status_code == 200
        assert upload(client, [(_xray_png(3), "after.png")]).status_code == 201
