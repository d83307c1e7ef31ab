"""HTML pages: upload (many files, folders, drag and drop), worklist, study (bars, heatmap toggles,
box, DICOM metadata, model version, the research notice and the untrained banner)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shared.config import Settings
from shared.findings import FINDINGS
from shared.models import Batch, Finding
from tests.web.support import add_study, make_app, session_for, utc

NOTICE = "Research demo — an aid, not a diagnosis"
STATIC = Path(__file__).resolve().parents[2] / "web" / "static"


def _study(settings: Settings, trained: bool | None, status: str = "done") -> int:
    with session_for(settings) as session:
        batch = Batch()
        session.add(batch)
        study = add_study(session, batch, status=status, due_at=utc(9), model_version="feedc0de12345678",
                          model_trained=trained, format="dicom", patient_name="DOE^JANE",
                          accession_number="ACC-7")
        if status == "done":
            for label in FINDINGS:
                session.add(Finding(study=study, label=label, probability=0.7 if label == "Effusion" else 0.05,
                                    threshold=0.4, positive=label == "Effusion",
                                    heatmap_path=f"heatmaps/{study.id}/{label}.png",
                                    box_x=100, box_y=200, box_w=300, box_h=250))
        session.commit()
        return study.id


def test_upload_page_takes_many_files_and_folders(settings: Settings) -> None:
    app, _ = make_app(settings)
    html = app.test_client().get("/").get_data(as_text=True)
    assert NOTICE in html
    assert re.search(r'<input id="file-input" type="file"[^>]*\bmultiple\b', html)
    assert re.search(r'<input id="folder-input" type="file"[^>]*\bwebkitdirectory\b', html)
    assert 'id="dropzone"' in html and "/static/upload.js" in html
    script = (STATIC / "upload.js").read_text()
    assert "webkitGetAsEntry" in script and "readEntries" in script  # dropped folders are walked
    assert "/api/v1/batches" in html  # posts to the API and polls the batch JSON


def test_worklist_page_polls_the_api(settings: Settings) -> None:
    app, _ = make_app(settings)
    html = app.test_client().get("/worklist").get_data(as_text=True)
    assert NOTICE in html and 'data-url="/api/v1/worklist"' in html and "/static/worklist.js" in html
    assert "setInterval" in (STATIC / "worklist.js").read_text()


def test_study_page_with_untrained_model_shows_banner(settings: Settings) -> None:
    app, _ = make_app(settings)
    study_id = _study(settings, trained=False)
    html = app.test_client().get(f"/studies/{study_id}").get_data(as_text=True)
    assert NOTICE in html
    assert 'class="banner danger"' in html and "Untrained model" in html
    assert "feedc0de12345678" in html and "DOE^JANE" in html and "ACC-7" in html
    assert f'src="/studies/{study_id}/image"' in html
    assert html.count('name="layer"') == len(FINDINGS) + 1  # one toggle per finding, plus "none"
    assert f'data-heatmap="/studies/{study_id}/heatmaps/Effusion.png"' in html
    assert 'data-probability="0.7" data-threshold="0.4"' in html
    assert 'data-box-x="100" data-box-y="200" data-box-w="300" data-box-h="250"' in html
    assert 'id="plain-summary"' in html and "fluid around the lungs (pleural effusion)" in html
    assert "an aid, not a diagnosis" in html.split('id="plain-summary"')[1].split("</p>")[0]
    assert "untrained" in html.split('id="plain-summary"')[1].split("</p>")[0]


def test_study_page_with_trained_model_has_no_banner(settings: Settings) -> None:
    app, _ = make_app(settings)
    html = app.test_client().get(f"/studies/{_study(settings, trained=True)}").get_data(as_text=True)
    assert NOTICE in html and "Untrained model" not in html


@pytest.mark.parametrize("status", ["queued", "processing"])
def test_study_page_while_waiting(settings: Settings, status: str) -> None:
    app, _ = make_app(settings)
    html = app.test_client().get(f"/studies/{_study(settings, None, status)}").get_data(as_text=True)
    assert f'data-status="{status}"' in html and 'name="layer"' not in html
    assert 'id="plain-summary"' not in html


def test_missing_study_page_is_404(settings: Settings) -> None:
    app, _ = make_app(settings)
    assert app.test_client().get("/studies/12345").status_code == 404


def test_pages_run_no_inline_script_and_send_a_csp(settings: Settings) -> None:
    app, _ = make_app(settings)
    client = app.test_client()
    study_id = _study(settings, trained=True)
    for url in ("/", "/worklist", f"/studies/{study_id}"):
        response = client.get(url)
        assert "script-src 'self'" in response.headers["Content-Security-Policy"]
        for tag in re.findall(r"<script[^>]*>", response.get_data(as_text=True)):
            assert "src=" in tag, tag
