"""End to end inside one test: the Flask app (test client) uploads the 16 real NIH images
plus one broken file in one batch; a real `xray worker` process on the real Redis diagnoses them
into a real database (SQLite, and the PostgreSQL on this machine); the JSON API serves the results."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from shared.config import Settings
from shared.findings import FINDINGS
from tests.conftest import make_account, token_client_class
from tests.service_harness import delete_queue_keys, service_env, wait_until, worker_process

pytestmark = pytest.mark.slow

BATCH_TIMEOUT_S = 600.0


def _run_batch(settings: Settings, redis_url: str, bundle: Path, images: list[Path], tmp_path: Path) -> None:
    from migrations import upgrade
    from shared.queue import make_celery
    from web import create_app

    upgrade(settings.database_url)
    app = create_app(settings, celery=make_celery(settings, redis_url))
    app.config["TESTING"] = True
    app.test_client_class = token_client_class(make_account(settings.database_url, "integration", "admin").token)
    client = app.test_client()
    env = service_env(settings, redis_url, bundle)
    try:
        with worker_process(env, tmp_path / "worker.log"):
            files = [(io.BytesIO(path.read_bytes()), path.name) for path in images]
            files.append((io.BytesIO(b"this is not an image\n"), "broken.png"))
            response = client.post("/api/v1/batches", data={"files": files}, content_type="multipart/form-data")
            assert response.status_code == 201, response.get_data(as_text=True)
            body = response.get_json()
            assert len(body["accepted"]) == len(images)
            assert [r["filename"] for r in body["rejected"]] == ["broken.png"]
            assert "not a PNG, JPEG or DICOM file" in body["rejected"][0]["reason"]
            batch_url = f"/api/v1/batches/{body['batch_id']}"

            def all_finished() -> bool:
                counts = client.get(batch_url).get_json()["counts"]
                return counts.get("done", 0) + counts.get("failed", 0) == len(images)

            wait_until(all_finished, BATCH_TIMEOUT_S, interval_s=1.0,
                       describe=lambda: f"batch: {client.get(batch_url).get_json()['counts']}; "
                                        f"worker log tail: {(tmp_path / 'worker.log').read_text()[-3000:]}")
            batch = client.get(batch_url).get_json()
            assert batch["counts"].get("done") == len(images), batch["counts"]
    finally:
        delete_queue_keys(redis_url, settings.queue_name)

    for study in batch["studies"]:
        detail = client.get(f"/api/v1/studies/{study['id']}").get_json()
        assert detail["status"] == "done"
        assert [f["label"] for f in detail["findings"]] == list(FINDINGS)
        assert detail["model_trained"] is False
        for finding in detail["findings"]:
            assert 0.0 <= finding["probability"] <= 1.0
            heatmap = client.get(finding["heatmap_url"])
            assert heatmap.status_code == 200
            assert heatmap.data[:8] == b"\x89PNG\r\n\x1a\n"
    worklist = client.get("/api/v1/worklist?limit=50").get_json()
    assert {s["id"] for s in worklist["studies"]} == {s["id"] for s in batch["studies"]}


def test_batch_through_real_worker_sqlite(settings: Settings, redis_url: str, service_bundle: Path,
                                          nih_full_images: list[Path], tmp_path: Path) -> None:
    assert len(nih_full_images) == 16
    _run_batch(settings, redis_url, service_bundle, nih_full_images, tmp_path)


@pytest.mark.postgres
def test_batch_through_real_worker_postgres(settings: Settings, redis_url: str, postgres_url: str,
                                            service_bundle: Path, nih_full_images: list[Path],
                                            tmp_path: Path) -> None:
    _run_batch(settings.with_overrides(database_url=postgres_url), redis_url, service_bundle,
               nih_full_images, tmp_path)
