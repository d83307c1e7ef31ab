"""`xray submit` against the real app served over HTTP in a thread: folders (nested), files and zips
go in chunks (and a request the server refuses as too large is split), progress bars for upload and
diagnosis, a summary with done / failed / rejected reasons, the Bearer header, and no duplicate
studies when the same folder is submitted again (unless --rerun).

The Celery producer is injected: instead of Redis and a TensorFlow worker (the browser test and
tests/integration/test_service_integration.py run those), `StandInWorker` finishes each enqueued study from a
thread, using the real triage rule, so that `submit` has a batch to follow to completion."""

from __future__ import annotations

import io
import queue
import shutil
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, request
from sqlalchemy import func, select, update
from werkzeug.serving import make_server

from cli.main import main
from shared.config import Settings
from shared.db import make_engine, make_session_factory
from shared.models import Study
from shared.triage import triage
from tests.web.support import make_app, session_for


@contextmanager
def serve(app: Flask) -> Iterator[str]:
    """The app on a free local port, served by werkzeug in a thread; yields its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


class StandInWorker:
    """Receives `send_task` like a Celery producer and, on its own thread, marks each study done
    (no findings, urgency from the real triage rule) or, for file names containing 'fail', failed."""

    def __init__(self, settings: Settings) -> None:
        self.factory = make_session_factory(make_engine(settings.database_url))
        self.ids: queue.Queue[int | None] = queue.Queue()
        self.sent: list[int] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def send_task(self, name: str, args: list[Any] | None = None, **_kwargs: Any) -> None:
        assert args is not None
        self.sent.append(int(args[0]))
        self.ids.put(int(args[0]))

    def _run(self) -> None:
        while (study_id := self.ids.get()) is not None:
            now = datetime.now(UTC)
            with self.factory() as session:
                study = session.get(Study, study_id)
                assert study is not None
                if "fail" in study.original_filename:
                    values: dict[str, Any] = {"status": "failed", "error": "the image could not be decoded"}
                else:
                    t = triage([], now, 240.0)
                    values = {"status": "done", "urgency": t.urgency, "due_at": t.due_at, "model_version": "standin",
                              "model_trained": False}
                session.execute(update(Study).where(Study.id == study_id).values(finished_at=now, **values))
                session.commit()

    def stop(self) -> None:
        self.ids.put(None)
        self.thread.join(timeout=10)


@pytest.fixture
def service(settings: Settings) -> Iterator[tuple[str, Settings, list[str | None]]]:
    worker = StandInWorker.__new__(StandInWorker)
    app, _ = make_app(settings, producer=worker)
    StandInWorker.__init__(worker, settings)
    auth: list[str | None] = [app.config["TEST_ACCOUNT"].token]  # then the Authorization headers seen
    app.before_request(lambda: auth.append(request.headers.get("Authorization")) and None)
    with serve(app) as url:
        yield url, settings, auth
    worker.stop()


@pytest.fixture
def folder(tmp_path: Path, nih_full_images: list[Path], kermany_dir: Path) -> Path:
    root = tmp_path / "day"
    (root / "ward4" / "bed2").mkdir(parents=True)
    (root / ".hidden").mkdir()
    for i, path in enumerate(nih_full_images[:3]):
        shutil.copy(path, root / ("ward4/bed2" if i == 0 else "ward4") / path.name)
    shutil.copy(nih_full_images[3], root / f"fail-{nih_full_images[3].name}")
    jpeg = sorted(kermany_dir.rglob("*.jpeg"))[0]
    shutil.copy(jpeg, root / jpeg.name)
    with zipfile.ZipFile(root / "more.zip", "w") as zf:
        for path in nih_full_images[4:6]:
            zf.write(path, f"scans/{path.name}")
    (root / "notes.txt").write_text("not an image")
    (root / ".DS_Store").write_bytes(b"junk")
    (root / ".hidden" / nih_full_images[7].name).write_bytes(nih_full_images[7].read_bytes())
    return root


def _studies(settings: Settings) -> int:
    with session_for(settings) as session:
        return int(session.scalar(select(func.count()).select_from(Study)) or 0)


def test_submit_folder_then_again_without_duplicates(service, folder: Path,  # type: ignore[no-untyped-def]
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    url, settings, auth = service
    token = auth.pop(0)
    code = main(["submit", str(folder), "--url", url, "--token", token, "--chunk-files", "2", "--poll", "0.2"])
    out, err = capsys.readouterr()
    assert code == 1, (out, err)  # one failed study and one rejected file
    assert "upload" in err and "diagnose" in err and "100%" in err, (out, err)  # the two tqdm bars
    assert "6 done, 1 failed, 1 rejected, 0 already submitted" in out
    assert "fail-" in out and "the image could not be decoded" in out
    assert "notes.txt: not a PNG, JPEG or DICOM file" in out
    assert _studies(settings) == 7  # 3 nested PNGs + failing PNG + JPEG + 2 from the zip; hidden ones skipped
    assert auth and set(auth) == {f"Bearer {token}"}
    assert main(["submit", str(folder), "--url", url, "--poll", "0.2", "--no-progress"]) == 2
    assert "Authentication required" in capsys.readouterr()[1]  # no token: nothing is let in
    assert _studies(settings) == 7

    code = main(["submit", str(folder), "--url", url, "--token", token, "--poll", "0.2", "--no-progress"])
    out, _ = capsys.readouterr()
    # The failed file has no result, so it is diagnosed again (a new batch) and fails again.
    assert "0 done, 1 failed, 1 rejected, 6 already submitted" in out, out
    assert "more.zip/scans/" in out and "--rerun" in out
    # The failed study's file has no result: sending it again diagnoses it again (and it fails again).
    assert _studies(settings) == 8

    one = next((folder / "ward4").glob("*.png"))
    code = main(["submit", str(one), "--url", url, "--token", token, "--rerun", "--poll", "0.2", "--no-progress"])
    out, _ = capsys.readouterr()
    assert code == 0 and "1 done, 0 failed, 0 rejected, 0 already submitted" in out
    assert _studies(settings) == 9


def test_requests_over_the_server_limit_are_split(settings: Settings, nih_full_images: list[Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    sizes = sorted(p.stat().st_size for p in nih_full_images[:6])
    small = settings.with_overrides(max_upload_bytes=sizes[-1] * 2 + 4096)  # at most ~2 files per request
    worker = StandInWorker.__new__(StandInWorker)
    app, _ = make_app(small, producer=worker)
    StandInWorker.__init__(worker, small)
    posts: list[int] = []
    app.after_request(lambda response: (posts.append(response.status_code) if request.method == "POST" else None)
                      or response)
    try:
        with serve(app) as url:
            code = main(["submit", *map(str, nih_full_images[:6]), "--url", url, "--chunk-mb", "100",
                         "--token", app.config["TEST_ACCOUNT"].token,
                         "--poll", "0.2", "--no-progress"])
    finally:
        worker.stop()
    out, _ = capsys.readouterr()
    assert code == 0, out
    assert "6 done, 0 failed, 0 rejected" in out
    assert 413 in posts and posts.count(201) >= 3


def test_unreachable_service_is_a_clear_error(tmp_path: Path, nih_full_images: list[Path],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["submit", str(nih_full_images[0]), "--url", "http://127.0.0.1:9", "--no-progress"])
    _, err = capsys.readouterr()
    assert code == 2 and "Could not reach the service" in err


def test_missing_path_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["submit", str(tmp_path / "nope"), "--url", "http://127.0.0.1:9"]) == 1
    out, err = capsys.readouterr()
    assert "no such file or folder" in out and "Nothing to send" in err


def test_zip_bytes_in_memory_are_not_needed(tmp_path: Path) -> None:
    from cli.submit import chunked, collect

    (tmp_path / "a").mkdir()
    for name, size in [("a/1.png", 10), ("a/2.png", 10), ("a/3.png", 30), ("a/__MACOSX/x.png", 1)]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(io.BytesIO(b"x" * size).getvalue())
    files, problems = collect([tmp_path / "a"])
    assert [p.name for p in files] == ["1.png", "2.png", "3.png"] and problems == []
    assert [[p.name for p in c] for c in chunked(files, 25, 10)] == [["1.png", "2.png"], ["3.png"]]
