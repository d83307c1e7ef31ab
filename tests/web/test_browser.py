"""The clinician's day in headless Chromium (Playwright): the real app served over HTTP, a real
`xray worker` (untrained 96-pixel bundle) on the real Redis. Upload a batch (files and a zip) through
the page, watch per-file and batch progress, wait for the worklist to fill, open a study, pan/zoom,
toggle a heatmap and its opacity, mark the study reviewed, and see it leave the worklist.
Screenshots go to the test's folder and to test-output/browser/."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pydicom.data
import pytest

from shared.config import PROJECT_ROOT, Settings
from tests.conftest import make_account
from tests.integration.test_submit import serve
from tests.service_harness import delete_queue_keys, service_env, worker_process

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 300_000


def test_upload_worklist_study_review(settings: Settings, redis_url: str, service_bundle: Path,
                                      nih_full_images: list[Path], tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"Debian's chromium is not installed at {CHROMIUM}")
    sync_api = pytest.importorskip("playwright.sync_api")
    from migrations import upgrade
    from shared.queue import make_celery
    from web import create_app

    upgrade(settings.database_url)
    admin = make_account(settings.database_url, "dr-browser", "admin")
    app = create_app(settings, celery=make_celery(settings, redis_url))
    shots = tmp_path / "screens"
    shots.mkdir()
    files = [str(p) for p in nih_full_images[:3]]
    archive = tmp_path / "ward.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(nih_full_images[3], f"ward/bed1/{nih_full_images[3].name}")
        zf.writestr("__MACOSX/ward/._x.png", b"junk")
    files.append(str(archive))
    files.append(str(Path(pydicom.data.get_testdata_file("CT_small.dcm"))))  # not a chest X-ray: flagged
    env = service_env(settings, redis_url, service_bundle)
    try:
        with worker_process(env, tmp_path / "worker.log"), serve(app) as url, \
                sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(TIMEOUT_MS)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))

            # Not logged in: the page sends the browser to the login form, which sends it back.
            page.goto(url + "/")
            page.wait_for_url(url + "/login?next=/")
            page.fill('input[name="username"]', admin.username)
            page.fill('input[name="password"]', admin.password)
            page.click('button[type="submit"]')
            page.wait_for_url(url + "/")
            assert admin.username in page.text_content(".account")
            # The upload (XMLHttpRequest) and the review (fetch) below carry the CSRF token (csrf.js).
            page.set_input_files("#file-input", files)
            page.fill("#batch-label", "Ward 4 morning")
            assert "5 files selected" in page.text_content("#selection")
            page.click("#upload-button")
            page.wait_for_selector("#file-rows tr >> text=accepted: study")
            assert "unpacked: 1 accepted" in page.text_content("#file-rows")
            page.screenshot(path=str(shots / "1-upload-sent.png"), full_page=True)
            # Batch progress: polled until every study is done (the worker loads TensorFlow first).
            page.wait_for_function("() => document.getElementById('done-text').textContent.startsWith('5 of 5')",
                                   timeout=TIMEOUT_MS)
            page.screenshot(path=str(shots / "2-upload-diagnosed.png"), full_page=True)

            page.goto(url + "/worklist")
            page.wait_for_function("() => document.querySelectorAll('#worklist-rows tr.clickable').length === 5")
            assert "1–5 of 5" in page.text_content("#page-info")
            flags = page.locator("#worklist-rows .not-frontal")
            assert flags.count() == 1 and flags.first.text_content() == "not a frontal chest X-ray: findings unreliable"
            flagged_href = page.locator("#worklist-rows tr.clickable", has=page.locator(".not-frontal")).locator(
                "a").get_attribute("href")
            page.screenshot(path=str(shots / "3-worklist.png"), full_page=True)
            first_link = page.locator("#worklist-rows tr.clickable a").first
            href = first_link.get_attribute("href")
            first_link.click()
            page.wait_for_url(url + href)

            page.wait_for_selector("#xray")
            page.wait_for_function("() => document.getElementById('xray').naturalWidth > 0")
            summary = page.text_content("#plain-summary") or ""
            assert page.is_visible("#plain-summary") and "an aid, not a diagnosis" in summary
            page.check('input[name="layer"][value="Edema"]')
            page.wait_for_function("() => !document.getElementById('heatmap').hidden && "
                                   "document.getElementById('heatmap').naturalWidth > 0")
            page.fill("#opacity", "80")
            page.dispatch_event("#opacity", "input")
            assert page.eval_on_selector("#heatmap", "e => e.style.opacity") == "0.8"
            page.locator("#viewer").scroll_into_view_if_needed()  # the summary above may push it down
            viewer = page.locator("#viewer").bounding_box()
            assert viewer is not None
            page.mouse.move(viewer["x"] + viewer["width"] / 2, viewer["y"] + viewer["height"] / 2)
            page.mouse.wheel(0, -600)
            page.wait_for_function("() => document.getElementById('zoom-level').textContent !== '100%'")
            page.screenshot(path=str(shots / "4-study-heatmap-zoomed.png"), full_page=True)
            page.click("#zoom-reset")
            assert page.text_content("#zoom-level") == "100%"

            page.check('input[name="verdict_Edema"][value="disagree"]')
            page.fill("#review-note", "Heatmap over the heart; no oedema.")
            page.click("#review-submit")
            page.wait_for_selector("#review-message >> text=off the worklist")
            assert admin.username in page.text_content("#reviewer")
            page.screenshot(path=str(shots / "5-study-reviewed.png"), full_page=True)

            page.goto(url + "/worklist")
            page.wait_for_function("() => document.querySelectorAll('#worklist-rows tr.clickable').length === 4")
            page.select_option("#f-status", "reviewed")
            page.wait_for_function("() => document.querySelectorAll('#worklist-rows tr.clickable').length === 1")
            page.screenshot(path=str(shots / "6-worklist-reviewed.png"), full_page=True)

            page.goto(url + flagged_href)  # the CT slice: the page says why its findings do not count
            assert page.is_visible("#not-frontal") and "modality is CT" in page.text_content("#not-frontal")
            assert "The image does not look like a frontal chest X-ray" in (page.text_content("#plain-summary") or "")
            assert errors == []
            browser.close()
    finally:
        delete_queue_keys(redis_url, settings.queue_name)
        keep_screenshots(shots)


def test_admin_operations_and_users_pages(settings: Settings, redis_url: str, tmp_path: Path) -> None:
    """An admin opens the operations page (the chart drawn by the server, the waiting queue, a worker's
    heartbeat), then adds a user on the users page, gives them a token, and disables them: their
    login is refused from then on. Every form posts with the session's CSRF token."""
    if not CHROMIUM.exists():
        pytest.skip(f"Debian's chromium is not installed at {CHROMIUM}")
    sync_api = pytest.importorskip("playwright.sync_api")
    import json
    from datetime import UTC, datetime, timedelta

    import redis

    from migrations import upgrade
    from shared.models import Batch
    from shared.queue import heartbeat_key, make_celery
    from tests.web.support import add_study, session_for
    from tests.web.test_model_page import _bundle_copy
    from web import create_app

    settings = settings.with_overrides(redis_url=redis_url, model_dir=_bundle_copy(tmp_path))
    upgrade(settings.database_url)
    admin = make_account(settings.database_url, "ops-admin", "admin")
    now = datetime.now(UTC)
    with session_for(settings) as session:
        batch = Batch()
        session.add(batch)
        for i in range(40):  # a busy hour: a study every minute and a half, one failure in ten
            finished = now - timedelta(seconds=90 * i)
            add_study(session, batch, status="failed" if i % 10 == 3 else "done", error="not an image",
                      created_at=finished - timedelta(seconds=20 + i), finished_at=finished, updated_at=finished)
        add_study(session, batch, status="queued", created_at=now - timedelta(minutes=4), updated_at=now)
        session.commit()
    client = redis.Redis.from_url(redis_url)
    client.rpush(settings.queue_name, b"waiting")
    client.set(heartbeat_key(settings, "ward-host:7"), json.dumps({
        "model_version": "demo-v1", "model_trained": True, "runtime": "openvino-bf16", "pid": 7,
        "at": now.isoformat()}), ex=60)
    app = create_app(settings, celery=make_celery(settings, redis_url))
    shots = tmp_path / "screens"
    shots.mkdir()
    try:
        with serve(app) as url, sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(60_000)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(url + "/login")
            page.fill('input[name="username"]', admin.username)
            page.fill('input[name="password"]', admin.password)
            page.click('button[type="submit"]')
            page.wait_for_url(url + "/worklist")

            page.click("nav >> text=Operations")
            page.wait_for_url(url + "/ops")
            assert page.text_content("#queue-depth") == "1"
            assert "waiting 4" in page.text_content("#oldest-queued")
            assert page.locator("#throughput-chart rect.chart-done").count() == 60
            assert "openvino-bf16" in page.text_content("#workers")
            assert "not an image" in page.text_content("#failures")
            page.screenshot(path=str(shots / "7-operations.png"), full_page=True)

            page.click("nav >> text=Model")  # the demo's card, for radiologists and admins
            page.wait_for_url(url + "/model")
            assert "resampling patients" in page.text_content("#mean-auroc")
            assert page.locator("#per-finding tbody tr").count() == 14
            for chart in ("#roc-chart", "#reliability-chart"):
                page.wait_for_function(f"() => document.querySelector('{chart}').naturalWidth > 0")
            assert "differs from this card" in page.text_content("#workers")  # the worker runs demo-v1
            assert "training images" in page.text_content("#frontal-check")
            page.screenshot(path=str(shots / "7b-model.png"), full_page=True)

            page.click("nav >> text=Users")
            page.wait_for_url(url + "/users")
            page.fill('#add-user input[name="username"]', "nurse.b")
            page.select_option('#add-user select[name="role"]', "uploader")
            page.fill('#add-user input[name="password"]', "ward four password")
            page.click('#add-user button[type="submit"]')
            page.wait_for_selector('tr[data-user="nurse.b"]')
            assert "User nurse.b added with role uploader" in page.text_content("main")
            row = 'tr[data-user="nurse.b"]'
            page.fill(f'{row} input[name="label"]', "ward scanner")
            page.click(f"{row} >> text=New token")
            token = page.text_content("#new-token-value") or ""
            assert token.startswith("xray_")
            page.screenshot(path=str(shots / "8-users-token.png"), full_page=True)
            page.click(f'{row} button[value="disable"]')
            page.wait_for_selector(f"{row} >> text=disabled")
            assert page.locator(f'{row} button[value="enable"]').count() == 1
            page.screenshot(path=str(shots / "9-users-disabled.png"), full_page=True)

            other = browser.new_page()
            other.goto(url + "/login")
            other.fill('input[name="username"]', "nurse.b")
            other.fill('input[name="password"]', "ward four password")
            other.click('button[type="submit"]')
            other.wait_for_selector("text=Wrong username or password")
            assert errors == []
            browser.close()
        assert app.test_client().get("/", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    finally:
        delete_queue_keys(redis_url, settings.queue_name)
        keep_screenshots(shots)


def keep_screenshots(shots: Path) -> None:
    """Copy a test's screenshots to test-output/browser, where a person can look at them."""
    out = PROJECT_ROOT / "test-output" / "browser"
    out.mkdir(parents=True, exist_ok=True)
    for shot in shots.glob("*.png"):
        shutil.copy(shot, out / shot.name)
