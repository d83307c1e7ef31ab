"""Results sent back to a PACS: a real Orthanc (Debian package `orthanc`) on free ports receives, by
C-STORE from worker/delivery.py, the SR and Secondary Capture of real done studies, in the source's
study; it is stopped mid-way and started again, and every result still arrives exactly once. A second
destination that never answers ends `failed` after its attempts, without holding back the first."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select, update

from shared.config import DicomDestination, parse_destinations
from shared.models import Delivery
from tests.shared.results_support import DoneStudies, make_done_studies
from tests.worker.orthanc_support import Orthanc, free_port
from worker.delivery import DeliveryError, deliver_study, send_cstore

pytestmark = pytest.mark.slow
MAX_ATTEMPTS = 4


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    server = Orthanc(tmp_path_factory.mktemp("orthanc"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def down() -> str:
    """A destination nobody listens on."""
    return f"NOBODY@127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
def studies(orthanc: Orthanc, down: str, tmp_path_factory: pytest.TempPathFactory,
            nih_full_images: list[Path]) -> DoneStudies:
    env = {"XRAY_DICOM_DESTINATIONS": f"{orthanc.destination}, {down}",
           "XRAY_DELIVERY_MAX_ATTEMPTS": str(MAX_ATTEMPTS), "XRAY_DICOM_AET": "XRAYTEST"}
    return make_done_studies(tmp_path_factory.mktemp("delivery"), nih_full_images[2], env)


def rows(studies: DoneStudies, study_id: int) -> dict[str, Delivery]:
    with studies.factory() as session:
        return {d.destination: d for d in session.scalars(select(Delivery).where(Delivery.study_id == study_id))}


def deliver(studies: DoneStudies, kind: str):  # type: ignore[no-untyped-def]
    return deliver_study(studies.factory, studies.storage, studies.settings, studies.ids[kind])


def sop_uids(instances: list[dict]) -> list[str]:  # type: ignore[type-arg]
    return sorted(instance["MainDicomTags"]["SOPInstanceUID"] for instance in instances)


def test_results_arrive_in_the_source_study_exactly_once_across_a_restart(orthanc: Orthanc, down: str,
                                                                          studies: DoneStudies) -> None:
    # The hospital's PACS holds the source images (the PNG study has none: its results make a new study).
    for kind in ("dicom", "deid"):
        orthanc.upload(studies.sources[kind])
    for kind in studies.ids:  # the diagnosis wrote one pending row per destination with the findings
        assert {d: r.status for d, r in rows(studies, studies.ids[kind]).items()} == {
            orthanc.destination: "pending", down: "pending"}

    first = deliver(studies, "png")
    assert first.sent == (orthanc.destination,) and first.pending == (down,)
    assert "could not be reached" in first.reasons[down]

    orthanc.stop()  # the PACS goes down mid-batch
    for kind in ("dicom", "deid"):
        outcome = deliver(studies, kind)
        assert outcome.sent == () and set(outcome.pending) == {orthanc.destination, down}
        row = rows(studies, studies.ids[kind])[orthanc.destination]
        assert row.status == "pending" and row.attempts == 1 and "could not be reached" in (row.error or "")
    orthanc.start()  # ... and comes back: the retries deliver
    for kind in ("dicom", "deid"):
        assert deliver(studies, kind).sent == (orthanc.destination,)

    for kind in ("png", "dicom", "deid"):
        done = studies.done(kind)
        row = rows(studies, done.id)[orthanc.destination]
        assert row.status == "sent" and row.error is None and row.sent_at is not None
        source = studies.sources.get(kind)
        study_uid = pydicom.dcmread(io.BytesIO(source)).StudyInstanceUID if source else done.uid("study")
        instances = orthanc.study_instances(study_uid)
        expected = [done.uid("sr"), done.uid("overlay")]
        if kind != "png":
            source = [i for i in instances if i["MainDicomTags"]["SOPInstanceUID"] not in expected]
            assert len(source) == 1  # the source, and the two results beside it in its study
        assert sorted(set(sop_uids(instances)) & set(expected)) == sorted(expected)
        assert len(instances) == (2 if kind == "png" else 3)
    total = orthanc.instance_count()
    assert total == 8

    # A resend (a lost answer, an operator's retry) reuses the UIDs: the PACS holds no duplicate.
    with studies.factory() as session:
        session.execute(update(Delivery).where(Delivery.destination == orthanc.destination).values(status="pending"))
        session.commit()
    for kind in studies.ids:
        assert deliver(studies, kind).sent == (orthanc.destination,)
    assert orthanc.instance_count() == total

    # The destination that never answers: failed after its attempts (each try above counted), with the reason.
    failed = set()
    for _ in range(MAX_ATTEMPTS):
        failed.update(kind for kind in studies.ids if deliver(studies, kind).failed == (down,))
    assert failed == set(studies.ids)
    for kind in studies.ids:
        row = rows(studies, studies.ids[kind])[down]
        assert row.status == "failed" and row.attempts == MAX_ATTEMPTS
        assert row.error and row.error.startswith(f"gave up after {MAX_ATTEMPTS} attempts")
    # Nothing is pending any more: a further message sends nothing.
    assert deliver(studies, "png").sent == ()


def test_a_refused_association_is_a_clear_error(orthanc: Orthanc, studies: DoneStudies) -> None:
    from worker.delivery import render_results

    wrong_aet = DicomDestination("NOT-ORTHANC", "127.0.0.1", orthanc.dicom_port)  # Orthanc checks the called AE
    datasets = render_results(studies.storage, studies.done("png"), studies.settings)
    with pytest.raises(DeliveryError, match="refused the association"):
        send_cstore(wrong_aet, "XRAYTEST", datasets)


def test_destinations_setting() -> None:
    assert [str(d) for d in parse_destinations("PACS@10.0.0.5:104,  ORTHANC@localhost:4242 PACS@10.0.0.5:104")] == [
        "PACS@10.0.0.5:104", "ORTHANC@localhost:4242"]
    assert str(parse_destinations("X@[::1]:11112")[0]) == "X@[::1]:11112"
    for wrong in ("PACS", "PACS@host", "PACS@host:0", "@host:104", "SEVENTEEN-CHARS-X@h:1"):
        with pytest.raises(ValueError, match="is not AE@host:port"):
            parse_destinations(wrong)


def test_reconciler_resends_pending_deliveries_left_untried(tmp_path: Path) -> None:
    """A lost delivery message: the reconciler finds the pending rows nobody tried for too long."""
    from datetime import UTC, datetime, timedelta

    from migrations import upgrade
    from shared.config import load_settings
    from shared.db import make_engine, make_session_factory
    from shared.models import Batch, Study
    from worker.reconcile import claim_stale_deliveries, delivery_stale_after_s

    settings = load_settings({"XRAY_VAR_DIR": str(tmp_path)})
    upgrade(settings.database_url)
    factory = make_session_factory(make_engine(settings.database_url))
    now = datetime.now(UTC)
    late = now - timedelta(seconds=delivery_stale_after_s(settings) + 1)
    with factory() as session:
        studies = [Study(batch=Batch(), original_filename="x.png", sha256="0" * 64, stored_path="x", format="png",
                         size_bytes=1, status="done") for _ in range(4)]
        session.add_all(studies)
        session.flush()
        for study, status, updated in zip(studies, ("pending", "pending", "sent", "failed"),
                                          (late, now, late, late), strict=True):
            session.add(Delivery(study_id=study.id, destination="P@h:104", status=status, updated_at=updated))
        session.commit()
        lost = studies[0].id
    assert claim_stale_deliveries(factory, settings, now) == [lost]
    assert claim_stale_deliveries(factory, settings, now) == []  # claimed: not sent twice
