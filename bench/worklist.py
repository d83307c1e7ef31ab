"""Worklist speed at 100,000 studies: fill a SQLite database and the PostgreSQL server (migrated to
head, so the indexes are the ones production has) and time the first, middle and last page and
filtered queries through the real API (Flask test client: query, count and JSON included).

    python -m bench.worklist [--studies 100000] [--postgres URL] [--repeat 5] [--databases postgresql]
                             [--before REVISION]

The PostgreSQL database is created and dropped by the script (an admin URL, default the test server's).
`--before REVISION` is the before/after guard of a schema change: the database is migrated to
REVISION, filled and measured, upgraded to head (timed: index builds on a full table) and measured,
then taken back to REVISION and measured once more, the same rows side by side: a difference within
the two "before" columns is the machine's drift, not the change.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, insert, text

from bench import common
from shared.config import load_settings
from shared.findings import FINDINGS
from shared.models import Batch, Finding, Study
from shared.triage import triage

DEFAULT_PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


class _F:
    def __init__(self, label: str, probability: float, threshold: float) -> None:
        self.label, self.probability, self.threshold = label, probability, threshold
        self.positive = probability >= threshold


def fill(url: str, n: int, seed: int = 0) -> None:
    """n done studies over 100 batches and ~10 days, 15% with a positive finding, 5% reviewed,
    2% with DICOM patient data; two finding rows per study (its top finding and one other)."""
    rng = random.Random(seed)
    engine = create_engine(url)
    start = datetime(2025, 1, 1, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(insert(Batch), [{"id": i + 1, "created_at": start, "label": f"batch {i + 1}"} for i in range(100)])
        studies: list[dict[str, Any]] = []
        findings: list[dict[str, Any]] = []
        for i in range(1, n + 1):
            finished = start + timedelta(seconds=i * 8.64)
            label = rng.choice(FINDINGS)
            positive = rng.random() < 0.15
            top = _F(label, rng.uniform(0.5, 1.0) if positive else rng.uniform(0.0, 0.49), 0.5)
            other = _F(rng.choice(FINDINGS), rng.uniform(0.0, 0.3), 0.5)
            if other.label == top.label:
                other = _F(FINDINGS[(FINDINGS.index(label) + 1) % len(FINDINGS)], other.probability, 0.5)
            t = triage([top, other], finished, 240.0)
            dicom = rng.random() < 0.02
            studies.append({
                "id": i, "batch_id": 1 + i % 100, "status": "done", "original_filename": f"img_{i:06d}.png",
                "sha256": uuid.uuid4().hex * 2, "stored_path": "originals/00/x.png",
                "format": "dicom" if dicom else "png", "size_bytes": 1, "attempts": 1,
                "patient_id": f"P{i:06d}" if dicom else None, "patient_name": f"DOE^PATIENT{i}" if dicom else None,
                "accession_number": f"ACC{i:07d}" if dicom else None, "model_version": "bench",
                "model_trained": i % 3 != 0, "urgency": t.urgency, "due_at": t.due_at,
                "created_at": finished - timedelta(seconds=30), "updated_at": finished, "finished_at": finished,
                "reviewed_at": finished + timedelta(hours=1) if rng.random() < 0.05 else None,
            })
            for f in (top, other):
                findings.append({"study_id": i, "label": f.label, "probability": f.probability,
                                 "threshold": f.threshold, "positive": f.positive})
            if len(studies) == 5000:
                conn.execute(insert(Study), studies)
                conn.execute(insert(Finding), findings)
                studies, findings = [], []
        if studies:
            conn.execute(insert(Study), studies)
            conn.execute(insert(Finding), findings)
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("ANALYZE"))
    else:
        with engine.begin() as conn:
            conn.execute(text("ANALYZE"))
    engine.dispose()


def database_env(url: str) -> dict[str, str]:
    return common.tree_env(common.PROJECT_ROOT, DATABASE_URL=url)


def _api_token(url: str) -> str:
    """A token of a new token-only admin, made in this process: `xray user` would first migrate the
    database to head, and `--before` measures it at an older revision."""
    from shared.accounts import create_user, issue_token
    from shared.db import make_engine, make_session_factory

    engine = make_engine(url)
    with make_session_factory(engine)() as session:
        token = issue_token(session, create_user(session, f"bench-{uuid.uuid4().hex[:8]}", "admin", None), "bench")
        session.commit()
    engine.dispose()
    return token


def _time(client: Any, url: str, repeat: int) -> tuple[float, dict[str, Any]]:
    body: dict[str, Any] = {}
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        response = client.get(url)
        samples.append((time.perf_counter() - t0) * 1000)
        assert response.status_code == 200, response.get_data(as_text=True)[:300]
        body = response.get_json()
    return statistics.median(samples), body


def measure(url: str, settings_dir: Path, repeat: int) -> list[tuple[str, float, int]]:
    from shared.db import make_engine, make_session_factory
    from web import create_app
    from web.worklist import Cursor

    settings = load_settings({"XRAY_VAR_DIR": str(settings_dir), "DATABASE_URL": url})
    app = create_app(settings, celery=object())  # type: ignore[arg-type]  # reads only: nothing is enqueued
    client = app.test_client()
    token = _api_token(url)
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    rows: list[tuple[str, float, int]] = []
    ms, first = _time(client, "/api/v1/worklist?limit=50", repeat)
    rows.append(("first page (open worklist)", ms, first["total"]))
    # Cursors for the middle and the last page, taken from the rows themselves.
    session = make_session_factory(make_engine(url))()
    total = first["total"]
    for name, position in (("middle page", total // 2), ("last page", max(0, total - 50))):
        study = session.execute(text(
            "SELECT id, due_at FROM studies WHERE status='done' AND reviewed_at IS NULL "
            "ORDER BY due_at, id LIMIT 1 OFFSET :o"), {"o": max(0, position - 1)}).first()
        assert study is not None
        due = study.due_at if isinstance(study.due_at, datetime) else datetime.fromisoformat(str(study.due_at))
        cursor = Cursor(due, study.id).encode()
        ms, body = _time(client, f"/api/v1/worklist?limit=50&after={cursor}", repeat)
        rows.append((f"{name} (cursor)", ms, len(body["studies"])))
    session.close()
    ms, body = _time(client, f"/api/v1/worklist?limit=50&offset={total // 2}", repeat)
    rows.append(("middle page (offset)", ms, len(body["studies"])))
    for name, query in [
        ("finding=Pneumothorax", "finding=Pneumothorax"),
        ("status=reviewed", "status=reviewed"),
        ("batch=42", "batch=42"),
        ("model_trained=false", "model_trained=false"),
        ("from/to one day", "from=2025-01-05&to=2025-01-05"),
        ("search patient ID (exact)", "q=P000150"),
        ("search name/file (contains)", "q=img_0999"),
        ("finding + batch + dates", "finding=Edema&batch=7&from=2025-01-02&to=2025-01-08"),
    ]:
        ms, body = _time(client, f"/api/v1/worklist?limit=50&{query}", repeat)
        rows.append((name, ms, body["total"]))
    return rows


def _analyze(url: str) -> None:
    engine = create_engine(url)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ANALYZE"))
    engine.dispose()


def _bench_one(name: str, url: str, tmp: Path, args: argparse.Namespace) -> None:
    upgrade = ["db", "upgrade"] + (["--revision", args.before] if args.before else [])
    common.xray(common.PROJECT_ROOT, database_env(url), *upgrade)
    t0 = time.perf_counter()
    fill(url, args.studies)
    print(f"\n{name}: {args.studies} studies filled in {time.perf_counter() - t0:.0f} s; "
          f"median of {args.repeat} requests")
    before = measure(url, tmp, args.repeat)
    if not args.before:
        print("| query | ms | rows/total |\n|---|---|---|")
        for label, ms, count in before:
            print(f"| {label} | {ms:.1f} | {count} |")
        return
    t0 = time.perf_counter()
    common.xray(common.PROJECT_ROOT, database_env(url), "db", "upgrade")
    _analyze(url)
    print(f"upgraded from {args.before} to head on the full table in {time.perf_counter() - t0:.0f} s")
    after = measure(url, tmp, args.repeat)
    _downgrade(url, args.before)  # and once more before: what differs by more than the drift is the change
    _analyze(url)
    again = measure(url, tmp, args.repeat)
    print(f"| query | ms at {args.before} | ms at head | ms at {args.before} again | rows/total |")
    print("|---|---|---|---|---|")
    for (label, ms_before, count), (_, ms_after, count_after), (_, ms_again, _) in zip(before, after, again,
                                                                                          strict=True):
        assert count == count_after, f"{label}: {count} rows before, {count_after} after"
        print(f"| {label} | {ms_before:.1f} | {ms_after:.1f} | {ms_again:.1f} | {count} |")


def _downgrade(url: str, revision: str) -> None:
    from alembic import command

    from migrations import alembic_config

    command.downgrade(alembic_config(url), revision)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=100_000)
    parser.add_argument("--postgres", default=DEFAULT_PG_ADMIN, help="admin URL ('' to skip PostgreSQL)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--databases", default="sqlite,postgresql", help="which of sqlite,postgresql to measure")
    parser.add_argument("--before", metavar="REVISION", help="measure at this schema revision, then at head")
    args = parser.parse_args()
    wanted = {d.strip().lower() for d in args.databases.split(",") if d.strip()}
    if not wanted <= {"sqlite", "postgresql"}:
        parser.error(f"--databases takes sqlite and/or postgresql, got {args.databases!r}")
    with tempfile.TemporaryDirectory() as tmp:
        targets: list[tuple[str, str]] = [("SQLite", f"sqlite:///{tmp}/bench.db")] if "sqlite" in wanted else []
        pg_name = f"xray_bench_{uuid.uuid4().hex[:8]}"
        admin = create_engine(args.postgres, isolation_level="AUTOCOMMIT") \
            if args.postgres and "postgresql" in wanted else None
        if admin is not None:
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{pg_name}"'))
            targets.append(("PostgreSQL", args.postgres.rsplit("/", 1)[0] + f"/{pg_name}"))
        try:
            for name, url in targets:
                _bench_one(name, url, Path(tmp), args)
        finally:
            if admin is not None:
                with admin.connect() as conn:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)'))
                admin.dispose()


if __name__ == "__main__":
    main()
