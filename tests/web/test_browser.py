"""The clinician's day in headless Chromium (Playwright): the real app served over HTTP, a real
`xray worker` (untrained 96-pixel bundle) on the real Redis. Upload a batch (files and a zip) through
the page, watch per-file and batch progress, wait for the worklist to fill, open a study, pan/zoom,
toggle a heatmap and its opacity, mark the study reviewed, and see it leave the worklist.
Screenshots go to the test's folder and to test-output/browser/."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

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
    from shared.migrate import upgrade
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
            assert "4 files selected" in page.text_content("#selection")
            page.click("#upload-button")
            page.wait_for_selector("#file-rows tr >> text=accepted: study")
            assert "unpacked: 1 accepted" in page.text_content("#file-rows")
            page.screenshot(path=str(shots / "1-upload-sent.png"), full_page=True)
            # Batch progress: polled until every study is done (the worker loads TensorFlow first).
            page.wait_for_function("() => document.getElementById('done-text').textContent.startsWith('4 of 4')",
                                   timeout=TIMEOUT_MS)
            page.screenshot(path=str(shots / "2-upload-diagnosed.png"), full_page=True)

            page.goto(url + "/worklist")
            page.wait_for_function("() => document.querySelectorAll('#worklist-rows tr.clickable').length === 4")
            assert "1–4 of 4" in page.text_content("#page-info")
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
            page.wait_for_function("() => document.querySelectorAll('#worklist-rows tr.clickable').length === 3")
            page.select_option("#f-status", "reviewed")
            page.wait_for_function("() => document.querySelectorAll('#worklist-rows tr.clickable').length === 1")
            page.screenshot(path=str(shots / "6-worklist-reviewed.png"), full_page=True)
            assert errors == []
            browser.close()
    finally:
        delete_queue_keys(redis_url, settings.queue_name)
        out = PROJECT_ROOT / "test-output" / "browser"
        out.mkdir(parents=True, exist_ok=True)
        for shot in shots.glob("*.png"):
            shutil.copy(shot, out / shot.name)
