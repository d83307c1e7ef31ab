"""HTML pages: upload (with batch progress), the worklist, a study. Data comes from the JSON API."""

from __future__ import annotations

from flask import Blueprint, abort, render_template

from shared.findings import DISPLAY_NAMES, FINDINGS
from shared.models import Batch
from web.context import db_session
from web.queries import study_with_findings
from web.review import reviews_of
from web.serializers import study_detail
from web.worklist import VIEWS

bp = Blueprint("pages", __name__)

NOTICE = "Research demo — an aid, not a diagnosis."


@bp.app_context_processor
def notice() -> dict[str, str]:
    return {"notice": NOTICE}


@bp.get("/")
def upload() -> str:
    return render_template("upload.html")


@bp.get("/worklist")
def worklist() -> str:
    return render_template("worklist.html", views=VIEWS, findings=[(f, DISPLAY_NAMES[f]) for f in FINDINGS])


@bp.get("/batches/<int:batch_id>")
def batch(batch_id: int) -> str:
    found = db_session().get(Batch, batch_id)
    if found is None:
        abort(404, description=f"Batch {batch_id} does not exist.")
    return render_template("batch.html", batch_id=batch_id, label=found.label)


@bp.get("/studies/<int:study_id>")
def study(study_id: int) -> str:
    found = study_with_findings(db_session(), study_id)
    if found is None:
        abort(404, description=f"Study {study_id} does not exist.")
    reviews = reviews_of(db_session(), study_id)
    return render_template("study.html", study=study_detail(found), reviews=reviews)
