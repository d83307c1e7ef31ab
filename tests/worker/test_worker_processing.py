"""worker/processing.py without Celery: real nih-full images, an untrained bundle at 64 px, SQLite.

Also shared/triage.py (the worklist order) and worker/reconcile.py (which studies are sent again).
"""

from __future__ import annotations

import hashlib
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import select, text, update

from migrations import upgrade
from shared.config import Settings
from shared.db import make_engine, make_session_factory, session_scope
from shared.findings import FINDINGS, URGENCY
from shared.gradcam import cam_from_png
from shared.models import Batch, Finding, Study
from shared.storage import FULL_MESSAGE, LocalStorage, Storage, StorageError
from shared.triage import due_at, triage, urgency
from worker.metrics import STAGES
from worker.processing import RetryLater, process_study, retry_delay_s
from worker.reconcile import claim_stale_studies

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def diagnoser(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from shared.classifier import Classifier, init_bundle
    from shared.diagnosis import Diagnoser

    directory = tmp_path_factory.mktemp("bundle") / "untrained-64"
    init_bundle(directory, input_size=64, seed=3)
    return Diagnoser(Classifier.load(directory))


@pytest.fixture
def db(settings: Settings):  # type: ignore[no-untyped-def]
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def storage(settings: Settings) -> LocalStorage:
    return LocalStorage(settings.storage_dir)


def add_study(factory, storage: Storage, data: bytes, name: str = "x.png", fmt: str = "png",  # type: ignore[no-untyped-def]
              **fields) -> int:
    rel = storage.put_original(data, "dcm" if fmt == "dicom" else fmt)
    with session_scope(factory) as session:
        batch = Batch(label="test")
        study = Study(batch=batch, original_filename=name, sha256=hashlib.sha256(data).hexdigest(),
                      stored_path=rel, format=fmt, size_bytes=len(data), **fields)
        session.add(study)
        session.flush()
        return study.id


def snapshot(factory, study_id: int, with_findings: bool = True) -> tuple[dict, list[tuple]]:  # type: ignore[no-untyped-def]
    with session_scope(factory) as session:
        study = session.get(Study, study_id)
        assert study is not None
        row = {c.name: getattr(study, c.name) for c in Study.__table__.columns}
        if not with_findings:
            return row, []
        findings = [(f.id, f.label, f.probability, f.heatmap_path)
                    for f in session.scalars(select(Finding).where(Finding.study_id == study_id))]
        return row, findings


def test_real_images_done_with_14_findings_and_heatmaps(db, storage, diagnoser, settings: Settings,
                                                        nih_full_images: list[Path]) -> None:
    paths = nih_full_images[:3]
    assert len(paths) == 3
    ids = [add_study(db, storage, p.read_bytes(), p.name) for p in paths]
    for study_id in ids:
        outcome = process_study(db, storage, diagnoser, study_id, settings=settings)
        assert outcome.status == "done", outcome
        # Every stage's milliseconds, the record too, for the metrics (worker/metrics.py).
        assert set(STAGES) <= set(outcome.timings) and all(v >= 0 for v in outcome.timings.values())
    for path, study_id in zip(paths, ids, strict=True):
        row, findings = snapshot(db, study_id)
        assert row["status"] == "done" and row["error"] is None
        assert row["attempts"] == 1
        assert row["model_trained"] is False and len(row["model_version"]) == 16
        assert {"read", "decode", "preprocess", "forward", "cam", "write"} <= set(row["timings"])
        assert 0.0 <= row["urgency"] <= 1.0
        assert row["finished_at"] is not None and row["started_at"] is not None
        with Image.open(path) as original:
            assert (row["width"], row["height"]) == original.size
        waited = row["due_at"] - row["finished_at"]
        assert waited == timedelta(minutes=settings.triage_max_wait_minutes * (1 - row["urgency"]))
        assert [f[1] for f in sorted(findings)] == list(FINDINGS)
        for _, label, probability, heatmap in findings:
            assert 0.0 <= probability <= 1.0
            assert heatmap == f"heatmaps/00000/{study_id}.png"  # one sheet holds every finding's map
            # The finding's low-resolution CAM (2 x 2 at 64 px input), 16-bit, in the study's sheet.
            cam = cam_from_png(storage.read(heatmap), label)
            assert cam.shape == (2, 2) and cam.min() >= 0.0 and cam.max() <= 1.0
            assert cam.max() in (0.0, 1.0)  # each map is divided by its maximum
        assert any(cam_from_png(storage.read(h), label).max() == 1.0 for _, label, _, h in findings)
        assert not list(storage.path("heatmaps/00000").glob(".tmp-*"))


def test_second_delivery_changes_nothing(db, storage, diagnoser, settings: Settings,
                                         nih_full_images: list[Path]) -> None:
    study_id = add_study(db, storage, nih_full_images[5].read_bytes())
    assert process_study(db, storage, diagnoser, study_id, settings=settings).status == "done"
    before = snapshot(db, study_id)
    heatmap = storage.path(Storage.cam_sheet_relpath(study_id))
    mtime = heatmap.stat().st_mtime_ns
    again = process_study(db, storage, diagnoser, study_id, settings=settings)
    assert again.status == "skipped"
    assert snapshot(db, study_id) == before
    assert heatmap.stat().st_mtime_ns == mtime


def test_invalid_image_fails_with_reason(db, storage, diagnoser, settings: Settings) -> None:
    study_id = add_study(db, storage, b"this is not an image at all\n" * 10, "broken.png")
    outcome = process_study(db, storage, diagnoser, study_id, settings=settings)
    assert outcome.status == "failed" and outcome.category == "invalid_image"
    row, findings = snapshot(db, study_id)
    assert row["status"] == "failed" and "not a PNG, JPEG or DICOM file" in row["error"]
    assert findings == []
    # A failed study is left as it is, too.
    assert process_study(db, storage, diagnoser, study_id, settings=settings).status == "skipped"


def test_missing_original_fails_and_missing_study_is_dropped(db, storage, diagnoser, settings: Settings,
                                                             nih_full_images: list[Path]) -> None:
    study_id = add_study(db, storage, nih_full_images[0].read_bytes())
    storage.path(snapshot(db, study_id)[0]["stored_path"]).unlink()
    outcome = process_study(db, storage, diagnoser, study_id, settings=settings)
    assert outcome.status == "failed" and "upload the image again" in (outcome.reason or "")
    assert outcome.category == "file_missing"
    assert process_study(db, storage, diagnoser, 999_999, settings=settings).status == "missing"


def test_database_error_retries_then_succeeds(db, storage, diagnoser, settings: Settings,
                                              nih_full_images: list[Path]) -> None:
    """A real OperationalError from SQLite (the findings table is briefly missing) is transient."""
    study_id = add_study(db, storage, nih_full_images[1].read_bytes())
    with session_scope(db) as session:
        session.execute(text("ALTER TABLE findings RENAME TO findings_away"))
    with pytest.raises(RetryLater) as caught:
        process_study(db, storage, diagnoser, study_id, settings=settings)
    assert caught.value.attempt == 1 and "database" in caught.value.reason and caught.value.cause == "database"
    row, _ = snapshot(db, study_id, with_findings=False)
    assert row["status"] == "processing" and row["attempts"] == 1
    assert row["error"] == "the database was unavailable"
    with session_scope(db) as session:
        session.execute(text("ALTER TABLE findings_away RENAME TO findings"))
    assert process_study(db, storage, diagnoser, study_id, settings=settings).status == "done"
    row, findings = snapshot(db, study_id)
    assert row["attempts"] == 2 and row["error"] is None and len(findings) == 14


def test_dicom_study_gets_a_display_picture_png_does_not(db, storage, diagnoser, settings: Settings,
                                                          nih_full_images: list[Path]) -> None:
    from tests.web.test_web_media import dicom_from_png

    png = nih_full_images[0].read_bytes()
    dicom = add_study(db, storage, dicom_from_png(png), name="x.dcm", fmt="dicom")
    plain = add_study(db, storage, png)
    for study_id in (dicom, plain):
        assert process_study(db, storage, diagnoser, study_id, settings=settings).status == "done"
    row, _ = snapshot(db, dicom, with_findings=False)
    shown = Image.open(io.BytesIO(storage.read(row["display_path"])))
    assert shown.mode == "L" and shown.size == Image.open(io.BytesIO(png)).size
    assert row["model_runtime"] == "tensorflow-f32"
    assert snapshot(db, plain, with_findings=False)[0]["display_path"] is None


def test_an_image_that_is_not_a_frontal_chest_x_ray_is_flagged_and_never_urgent(
        db, storage, settings: Settings, nih_full_images: list[Path], tmp_path: Path) -> None:
    """The demo bundle's frontal reference with the untrained 64 px model: a CT slice (its header and
    its pixels), a page of text (pixels only) and a real X-ray, through the worker's whole path."""
    import pydicom.data

    from shared.classifier import Classifier, init_bundle
    from shared.diagnosis import Diagnoser
    from shared.frontal import FrontalReference
    from training.negatives import generated_negatives

    demo = Path(__file__).resolve().parents[2] / "models" / "demo"
    directory = tmp_path / "bundle-64"
    init_bundle(directory, input_size=64, seed=3)
    classifier = Classifier.load(directory)
    checked = Diagnoser(classifier, FrontalReference.load(demo, Classifier.load(demo).card.frontal))
    ct = Path(pydicom.data.get_testdata_file("CT_small.dcm")).read_bytes()
    page = generated_negatives(1)["generated: page of text"][0]
    ids = {"ct": add_study(db, storage, ct, "ct.dcm", fmt="dicom", modality="CT"),
           "page": add_study(db, storage, page, "page.png"),
           "xray": add_study(db, storage, nih_full_images[0].read_bytes())}
    for study_id in ids.values():
        assert process_study(db, storage, checked, study_id, settings=settings).status == "done"
    rows = {name: snapshot(db, study_id, with_findings=False)[0] for name, study_id in ids.items()}
    assert rows["ct"]["not_frontal"] is True and "modality is CT" in rows["ct"]["not_frontal_reason"]
    assert rows["page"]["not_frontal"] is True and "looks unlike the frontal chest X-rays" in rows["page"][
        "not_frontal_reason"]
    assert rows["xray"]["not_frontal"] is False and rows["xray"]["not_frontal_reason"] is None
    for name in ("ct", "page"):
        assert rows[name]["urgency"] == 0.0
        assert rows[name]["due_at"] - rows[name]["finished_at"] == timedelta(
            minutes=settings.triage_max_wait_minutes)


class WatchedStorage(LocalStorage):
    """Storage that notes what the database showed when the study's sheet was written."""

    def __init__(self, root: Path, factory) -> None:  # type: ignore[no-untyped-def]
        super().__init__(root)
        self.factory = factory
        self.seen_while_writing: list[str] = []

    def put_cam_sheet(self, study_id: int, data: bytes) -> str:
        with session_scope(self.factory) as session:
            self.seen_while_writing.append(session.scalar(select(Study.status).where(Study.id == study_id)))
        return super().put_cam_sheet(study_id, data)


def test_study_is_done_only_once_its_sheet_is_stored(db, settings: Settings, diagnoser,
                                                     nih_full_images: list[Path]) -> None:
    storage = WatchedStorage(settings.storage_dir, db)
    study_id = add_study(db, storage, nih_full_images[2].read_bytes())
    assert process_study(db, storage, diagnoser, study_id, settings=settings).status == "done"
    assert storage.seen_while_writing == ["processing"]
    row, findings = snapshot(db, study_id)
    assert row["status"] == "done" and len(findings) == 14
    assert row["timings"]["write"] > 0.0
    assert cam_from_png(storage.read(findings[0][3]), findings[0][1]).shape == (2, 2)


class FullSheetStorage(LocalStorage):
    """A disk that is full when the sheet is written."""

    def put_cam_sheet(self, study_id: int, data: bytes) -> str:
        raise StorageError(FULL_MESSAGE)


def test_failed_sheet_write_records_nothing_and_retries(db, settings: Settings, diagnoser,
                                                  nih_full_images: list[Path]) -> None:
    storage = FullSheetStorage(settings.storage_dir)
    study_id = add_study(db, storage, nih_full_images[3].read_bytes())
    with pytest.raises(RetryLater) as caught:
        process_study(db, storage, diagnoser, study_id, settings=settings)
    assert caught.value.reason == FULL_MESSAGE and caught.value.cause == "storage"
    row, findings = snapshot(db, study_id)
    assert row["status"] == "processing" and row["error"] == FULL_MESSAGE and row["timings"] is None
    assert findings == []


def test_database_error_on_last_attempt_fails(db, storage, diagnoser, settings: Settings,
                                              nih_full_images: list[Path]) -> None:
    settings = settings.with_overrides(max_attempts=2)
    study_id = add_study(db, storage, nih_full_images[2].read_bytes())
    with session_scope(db) as session:
        session.execute(text("ALTER TABLE findings RENAME TO findings_away"))
    with pytest.raises(RetryLater):
        process_study(db, storage, diagnoser, study_id, settings=settings)
    outcome = process_study(db, storage, diagnoser, study_id, settings=settings)
    assert outcome.status == "failed"
    assert outcome.reason == "gave up after 2 attempts: the database was unavailable"
    assert outcome.category == "transient"
    row, _ = snapshot(db, study_id, with_findings=False)
    assert row["status"] == "failed" and row["error"] == outcome.reason


def test_study_a_worker_kept_dying_on_ends_failed(db, storage, diagnoser, settings: Settings,
                                                  nih_full_images: list[Path]) -> None:
    study_id = add_study(db, storage, nih_full_images[3].read_bytes(),
                         status="processing", attempts=settings.max_attempts)
    outcome = process_study(db, storage, diagnoser, study_id, settings=settings)
    assert outcome.status == "failed"
    assert outcome.reason is not None and "worker stopped while diagnosing it" in outcome.reason
    assert outcome.category == "attempts_used"


def test_database_down_before_claim_is_retried(storage, diagnoser, settings: Settings, tmp_path: Path) -> None:
    # A real OperationalError: SQLite cannot open a folder as its database file.
    (tmp_path / "a-folder").mkdir()
    engine = make_engine(f"sqlite:///{tmp_path / 'a-folder'}")
    with pytest.raises(RetryLater) as caught:
        process_study(make_session_factory(engine), storage, diagnoser, 1, settings=settings)
    assert caught.value.attempt is None
    engine.dispose()


class BrieflyFullStorage(LocalStorage):
    """A disk that is full for the first `full_for` sheet writes, then has room again."""

    def __init__(self, root: Path, full_for: int) -> None:
        super().__init__(root)
        self.full_for = full_for

    def put_cam_sheet(self, study_id: int, data: bytes) -> str:
        if self.full_for > 0:
            self.full_for -= 1
            raise StorageError(FULL_MESSAGE)
        return super().put_cam_sheet(study_id, data)


def test_a_disk_full_for_a_while_is_ridden_out_with_the_default_settings(db, diagnoser, tmp_path: Path,
                                                                          nih_full_images: list[Path]) -> None:
    """Defaults (no overrides): a disk full through three attempts, and through the retries' waits
    between them (at least a minute), still ends with the study done, not failed."""
    settings = Settings(database_url=str(db.kw["bind"].url), storage_dir=tmp_path / "storage")
    storage = BrieflyFullStorage(settings.storage_dir, full_for=3)
    study_id = add_study(db, storage, nih_full_images[1].read_bytes())
    for _ in range(3):
        with pytest.raises(RetryLater):
            process_study(db, storage, diagnoser, study_id, settings=settings)
    assert sum(retry_delay_s(n) for n in range(3)) >= 30
    assert sum(retry_delay_s(n) for n in range(settings.max_attempts - 1)) >= 60
    assert process_study(db, storage, diagnoser, study_id, settings=settings).status == "done"


def test_retry_backoff_is_exponential_and_bounded() -> None:
    assert [retry_delay_s(n) for n in range(8)] == [5, 10, 20, 40, 80, 160, 300, 300]


def test_reconciler_claims_each_stale_study_once(db, storage, settings: Settings,
                                                 nih_full_images: list[Path]) -> None:
    settings = settings.with_overrides(reconcile_after_s=60, task_time_limit_s=600)
    now = datetime.now(UTC)
    data = nih_full_images[0].read_bytes()
    fresh = add_study(db, storage, data)
    lost = add_study(db, storage, data)
    running = add_study(db, storage, data, status="processing")
    killed = add_study(db, storage, data, status="processing")
    done = add_study(db, storage, data, status="done")
    with session_scope(db) as session:
        for study_id, age in ((lost, 120), (running, 300), (killed, 700), (done, 10_000)):
            session.execute(update(Study).where(Study.id == study_id)
                            .values(updated_at=now - timedelta(seconds=age)))
    assert claim_stale_studies(db, settings, now, waiting={lost}) == [killed]
    assert claim_stale_studies(db, settings, now) == [lost]
    assert claim_stale_studies(db, settings, now) == []  # claimed: not sent twice
    # A minute later the fresh study is stale too, and the lost one is due for another try.
    assert claim_stale_studies(db, settings, now + timedelta(seconds=61)) == sorted([fresh, lost])


class _F:
    def __init__(self, label: str, probability: float, threshold: float = 0.5) -> None:
        self.label, self.probability, self.threshold = label, probability, threshold
        self.positive = probability >= threshold


def _normal(**probabilities: float) -> list[_F]:
    return [_F(label, probabilities.get(label, 0.0)) for label in FINDINGS]


def test_triage_bands_and_order() -> None:
    assert urgency(_normal()) == 0.0
    assert urgency(_normal(Pneumothorax=0.4)) == pytest.approx(0.5 * URGENCY["Pneumothorax"] * 0.8)
    # Positive: weight times confidence 0.8 + 0.2 * (p - t) / (1 - t); here (0.6 - 0.5) / 0.5 = 0.2.
    assert urgency(_normal(Hernia=0.6)) == pytest.approx(0.5 + 0.5 * URGENCY["Hernia"] * 0.84)
    assert urgency(_normal(Pneumothorax=1.0, Hernia=0.9)) == 1.0
    # The same finding further past its threshold ranks higher.
    assert urgency(_normal(Pneumothorax=0.99)) > urgency(_normal(Pneumothorax=0.51))
    # Any positive study ranks above any normal one; normal studies still order among themselves.
    assert urgency(_normal(Hernia=0.51)) > urgency(_normal(Pneumothorax=0.4999)) > urgency(_normal(Mass=0.4))


def test_bounded_wait_for_normal_studies() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    normal = triage(_normal(), t0, max_wait_minutes=240)
    assert normal.due_at == t0 + timedelta(minutes=240)
    # The most urgent study finishing after the normal one's due time is still ordered after it.
    late_urgent = triage(_normal(Pneumothorax=0.99), normal.due_at + timedelta(seconds=1), 240)
    assert late_urgent.due_at > normal.due_at
    # ... but one finishing earlier goes first.
    early_urgent = triage(_normal(Pneumothorax=0.99), t0 + timedelta(minutes=100), 240)
    assert early_urgent.due_at < normal.due_at
    assert due_at(t0, 2.0, 240) == t0
