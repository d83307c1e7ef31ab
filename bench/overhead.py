"""The worker's per-study CPU outside the forward pass, each optimisation against its fallback.

    python -m bench.overhead [--images 16] [--repeats 7]

Side by side in one run, single-threaded, best of the repeats, on real images (nih-full 1024 px
PNGs; a study's 14 CAMs from the demo model's features are replaced by smooth random maps of the
same shape):

1. decode + preprocess of a 1024 px PNG in a fresh process with glibc's default malloc and in one
   with `worker.allocator.keep_freed_memory()` (what every worker process runs), alternating;
2. the unfilter of those PNGs' rows: `shared._png_unfilter` with AVX2 (16 rows at a time in vector
   lanes) against its scalar loops (4 Paeth rows at a time), where the CPU has AVX2;
   the 14 boxes: `shared._regions` (C) against scipy's labelling;
3. preprocess's last step: `shared._resample.channels_f32` against the numpy steps;
4. the CAM sheet's durable write: `Storage.begin_cam_sheet` + `wait()` with the native thread, and
   the same with the caller's thread doing it (`put_cam_sheet`), wall time, plus how much of the
   native write hides behind 1 ms of the caller's own Python work;
5. a study's claim and record transactions on SQLite through SQLAlchemy's Connection and through
   `worker.study_sql` (the driver's connection).

Warm caches throughout: in a worker each of these runs after a forward pass has emptied the CPU's
caches, where the Python-heavy ones (SQL above all) cost more; `bench.worker` measures the whole
path in that setting.

Every pair computes the same result (checked): only the time differs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench import common

CHILD = """
import json, sys, time
from pathlib import Path
from shared.classifier import preprocess
from shared.config import ImageLimits
from shared.images import read_image
if sys.argv[1] == "tuned":
    from worker.allocator import keep_freed_memory
    keep_freed_memory()
repeats = int(sys.argv[2])
datas = [Path(p).read_bytes() for p in sys.argv[3:]]
limits = ImageLimits()
for d in datas:
    preprocess(read_image(d, limits).source, 224)
best = float("inf")
for _ in range(repeats):
    start = time.perf_counter()
    for d in datas:
        preprocess(read_image(d, limits).source, 224)
    best = min(best, (time.perf_counter() - start) / len(datas))
print(json.dumps(best * 1000.0))
"""


def best_ms(fn: Callable[[], object], repeats: int, inner: int = 1) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        best = min(best, (time.perf_counter() - start) / inner)
    return best * 1000.0


def decode_in_child(mode: str, paths: list[Path], repeats: int) -> float:
    done = subprocess.run([sys.executable, "-c", CHILD, mode, str(repeats), *map(str, paths)],
                          cwd=common.PROJECT_ROOT, capture_output=True, text=True, check=True, timeout=600)
    return float(json.loads(done.stdout.strip().splitlines()[-1]))


def with_attribute(module: object, name: str, value: object, fn: Callable[[], object]) -> object:
    saved = getattr(module, name)
    setattr(module, name, value)
    try:
        return fn()
    finally:
        setattr(module, name, saved)


def sql_ms(repeats: int, through_sqlalchemy: bool, studies: int = 200) -> float:
    """Best ms per study of the worker's two transactions (claim; record + 14 findings) on a scratch
    SQLite database, through SQLAlchemy's Connection or through worker.study_sql."""
    from datetime import UTC, datetime

    import worker.processing as processing
    from shared.db import make_engine, make_session_factory, session_scope
    from shared.migrate import upgrade
    from shared.models import Batch, Study
    from worker.study_sql import StudySql

    with tempfile.TemporaryDirectory(prefix="xray-bench-sql-") as folder:
        url = f"sqlite:///{folder}/bench.db"
        upgrade(url)
        engine = make_engine(url)
        sql = StudySql(engine, processing._STATEMENTS)
        at = datetime.now(UTC)
        record = {"model_version": "v", "model_trained": True, "width": 1024, "height": 1024,
                  "timings": {"decode": 1.0, "forward": 30.0}, "urgency": 0.5, "due_at": at, "finished_at": at}
        findings = [{"label": f"F{k}", "probability": 0.5, "threshold": 0.5, "positive": True,
                     "heatmap_path": "heatmaps/00000/1.png", "box_x": 1, "box_y": 2, "box_w": 3, "box_h": 4}
                    for k in range(14)]

        def new_ids() -> list[int]:
            with session_scope(make_session_factory(engine)) as session:
                batch = Batch(label="bench")
                rows = [Study(batch=batch, original_filename="x.png", sha256="0" * 64, stored_path="x",
                              format="png", size_bytes=1) for _ in range(studies)]
                session.add_all(rows)
                session.flush()
                return [row.id for row in rows]

        def one(study_id: int) -> None:
            claim = {"study_id": study_id, "max_attempts": 3, "at": at}
            rows = [{"study_id": study_id, **f} for f in findings]
            if through_sqlalchemy:
                with engine.begin() as connection:
                    connection.execute(processing._CLAIM, claim).all()
                with engine.begin() as connection:
                    connection.execute(processing._RECORD, {"study_id": study_id, **record})
                    connection.execute(processing._INSERT_FINDINGS, rows)
                return
            with sql.transaction() as cursor:
                sql.execute(cursor, "claim", claim).fetchall()
            with sql.transaction() as cursor:
                sql.execute(cursor, "record", {"study_id": study_id, **record})
                sql.executemany(cursor, "insert_findings", rows)

        best = float("inf")
        for _ in range(repeats):
            ids = new_ids()
            start = time.perf_counter()
            for study_id in ids:
                one(study_id)
            best = min(best, (time.perf_counter() - start) / len(ids))
        engine.dispose()
    return best * 1000.0


def main(argv: list[str] | None = None) -> None:
    import shared.classifier
    import shared.gradcam
    import shared.storage
    from shared import png_fast
    from shared.classifier import preprocess
    from shared.gradcam import boxes_from_cams, upsample

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    paths = [p for p in common.nih_full_images() if p.stat().st_size > 300_000][: args.images]
    print(common.machine_description())
    print(f"{len(paths)} nih-full 1024 px PNGs; best of {args.repeats}; load {common.load_average()}")
    rows: list[list[object]] = []

    default, tuned = [], []
    for _ in range(2):  # alternate, so that a drifting machine affects both
        default.append(decode_in_child("default", paths, args.repeats))
        tuned.append(decode_in_child("tuned", paths, args.repeats))
    rows.append(["decode + preprocess, 1024 px PNG", "glibc default malloc", min(default),
                 "keep_freed_memory()", min(tuned), min(default) / min(tuned)])

    if png_fast.VECTOR:
        from shared import _png_unfilter as png_unfilter

        filtered = [png_fast.filtered_rows(p.read_bytes()) for p in paths]
        rows_of = [(raw, np.empty((h, w), dtype=np.uint8), w, h) for raw, w, h in filter(None, filtered)]

        def unfilter_all(vector: bool) -> None:
            for raw, out, width, height in rows_of:
                png_unfilter.unfilter(raw, out, width, height, 1, vector)

        unfilter_all(False)
        scalar = [out.copy() for _, out, _, _ in rows_of]
        unfilter_all(True)
        assert all(np.array_equal(a, out) for a, (_, out, _, _) in zip(scalar, rows_of, strict=True))
        per_image = 1 / len(rows_of)
        rows.append(["unfilter of a 1024 px PNG's rows", "scalar, 4 Paeth rows at a time",
                     best_ms(lambda: unfilter_all(False), args.repeats) * per_image,
                     "AVX2, 16 rows at a time", best_ms(lambda: unfilter_all(True), args.repeats) * per_image, None])

    rng = np.random.default_rng(0)
    cams = np.stack([np.clip(upsample(rng.random((3, 3)) - 0.3, 7, 7), 0, None) for _ in range(14)])
    cams = (cams / np.maximum(cams.max(axis=(1, 2), keepdims=True), 1e-9)).astype(np.float32)
    fast_boxes = boxes_from_cams(cams, 1024, 1024)
    if shared.gradcam._regions is not None:
        slow_boxes = with_attribute(shared.gradcam, "_regions", None, lambda: boxes_from_cams(cams, 1024, 1024))
        assert slow_boxes == fast_boxes
        rows.append(["14 boxes of a study", "scipy labelling",
                     with_attribute(shared.gradcam, "_regions", None,
                                    lambda: best_ms(lambda: boxes_from_cams(cams, 1024, 1024), args.repeats, 200)),
                     "shared._regions (C)", best_ms(lambda: boxes_from_cams(cams, 1024, 1024), args.repeats, 200),
                     None])

    grey = rng.integers(0, 256, (224, 224), dtype=np.uint8)
    if shared.classifier._resample is not None:
        numpy_way = with_attribute(shared.classifier, "_resample", None, lambda: preprocess(grey, 224))
        assert np.array_equal(numpy_way, preprocess(grey, 224))
        rows.append(["preprocess of a 224 px image", "numpy clip, scale, 3 channels",
                     with_attribute(shared.classifier, "_resample", None,
                                    lambda: best_ms(lambda: preprocess(grey, 224), args.repeats, 200)),
                     "channels_f32 (C)", best_ms(lambda: preprocess(grey, 224), args.repeats, 200), None])

    sheet = shared.gradcam.cam_sheet_png(dict(zip((f"m{k}" for k in range(14)), cams, strict=True)))
    with tempfile.TemporaryDirectory(prefix="xray-bench-overhead-") as folder:
        storage = shared.storage.Storage(folder)
        storage.put_cam_sheet(0, sheet)
        ids = iter(range(1, 1_000_000))
        synchronous = best_ms(lambda: storage.put_cam_sheet(next(ids), sheet), args.repeats, 50)
        if shared.storage._durable is not None:
            native = best_ms(lambda: storage.begin_cam_sheet(next(ids), sheet).wait(), args.repeats, 50)
            rows.append(["durable sheet write (wall)", "caller's thread", synchronous, "native thread", native, None])

            def overlapped() -> None:
                pending = storage.begin_cam_sheet(next(ids), sheet)
                deadline = time.perf_counter() + 0.001
                while time.perf_counter() < deadline:  # the caller's own work, holding the GIL
                    pass
                pending.wait()

            rows.append(["write + 1 ms of the caller's work (wall)", "caller's thread", synchronous + 1.0,
                         "native thread", best_ms(overlapped, args.repeats, 50), None])
    rows.append(["claim + record transactions, SQLite (14 findings)", "SQLAlchemy Connection",
                 sql_ms(args.repeats, through_sqlalchemy=True), "worker.study_sql (driver)",
                 sql_ms(args.repeats, through_sqlalchemy=False), None])
    for row in rows:
        if row[-1] is None:
            row[-1] = float(row[2]) / float(row[4])  # type: ignore[arg-type]
    common.print_table("Per study, outside the forward pass (ms)", rows,
                       ["what", "fallback", "ms", "the worker's way", "ms", "speed-up"])


if __name__ == "__main__":
    main()
