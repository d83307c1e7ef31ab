"""CSV exports (worklist with its filters, one batch) that spreadsheet programs cannot turn into
formulas, and a study's result as a JSON attachment.

Every text cell is quoted, and neutralised where a spreadsheet could start a cell: at its start, and
after any comma, semicolon, tab or line break inside it, since a program set to another separator
(`;` in much of Europe) splits the line there whatever the quotes say."""

from __future__ import annotations

import csv
import io
import logging
import re
from collections.abc import Iterable, Iterator
from typing import Any

from shared.db import describe_db_error
from shared.findings import FINDINGS
from shared.models import Finding, Study
from web.serializers import iso, summary_text

log = logging.getLogger(__name__)

# The last line of an export that failed mid-way (the transfer is then cut, with no clean end).
INCOMPLETE_MARKER = "EXPORT INCOMPLETE"

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r", "\n")
# A separator (and spaces) inside a cell, followed by what would start a formula in the next "cell".
_FORMULA_AFTER_SEPARATOR = re.compile(r"([,;\t\r\n][ \t]*)(?=[=+\-@])")
COLUMNS = (
    "study_id", "batch_id", "status", "reviewed_at", "filename", "patient_id", "patient_name",
    "accession_number", "study_instance_uid", "study_date", "urgency", "due_at", "finished_at",
    "model_version", "model_trained", "not_frontal", "positive_findings", "error",
    *(f"p_{label}" for label in FINDINGS),
    "summary",
)


def safe_cell(value: Any) -> str | int | float:
    """Numbers as they are; text starting with = + - @ (or a tab/CR/LF, after any spaces) gets a leading
    apostrophe, and so does each such character after a separator inside the text, so a spreadsheet
    shows it as text instead of running it as a formula (OWASP CSV injection)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return value
    text = _FORMULA_AFTER_SEPARATOR.sub(r"\1'", str(value))
    return "'" + text if text.lstrip(" ").startswith(FORMULA_PREFIXES) else text


def study_row(study: Study, findings: list[Finding]) -> list[Any]:
    by_label = {f.label: f for f in findings}
    positives = sorted((f for f in findings if f.positive), key=lambda f: -f.probability)
    values: list[Any] = [
        study.id, study.batch_id, study.status, iso(study.reviewed_at), study.original_filename, study.patient_id,
        study.patient_name, study.accession_number, study.study_instance_uid, study.study_date,
        None if study.urgency is None else round(study.urgency, 4), iso(study.due_at), iso(study.finished_at),
        study.model_version, study.model_trained, study.not_frontal,
        "; ".join(f"{f.label} {f.probability:.3f}" for f in positives), study.error,
        *(round(by_label[label].probability, 4) if label in by_label else None for label in FINDINGS),
        summary_text(study, findings),
    ]
    return [safe_cell(v) for v in values]


def csv_lines(rows: Iterable[tuple[Study, list[Finding]]]) -> Iterator[str]:
    """The header, then one CSV line per study (streamed: the export never holds all rows).

    The status (200) is sent before the rows, so a failure mid-way (the database, or the audit log that
    each exported study must be written to first) cannot become an error status: the stream then ends
    with a line starting with INCOMPLETE_MARKER, and the error is raised again so that the server cuts
    the transfer (no final chunk: browsers and curl report the download as failed)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n", quoting=csv.QUOTE_NONNUMERIC)  # text always quoted

    def flush() -> str:
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text

    writer.writerow(COLUMNS)
    yield flush()
    sent = 0
    try:
        for study, findings in rows:
            writer.writerow(study_row(study, findings))
            yield flush()
            sent += 1
    except Exception as exc:
        log.error("CSV export stopped after %d studies: %s", sent, describe_db_error(exc))
        writer.writerow([f"{INCOMPLETE_MARKER}: the export failed after {sent} studies and this file lacks the "
                         "rest. Export again. Tell the administrator if it fails again."])
        yield flush()
        raise
