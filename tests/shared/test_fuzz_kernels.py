"""The C kernels that read uploads, fuzzed under AddressSanitizer and UndefinedBehaviorSanitizer.

shared/_png_unfilter.c and shared/_resample.c are built with -fsanitize=address,undefined into a
temporary folder, and tests/shared/fuzz_kernels.py runs in a Python that loads those builds (libasan
preloaded, every report fatal, Python's allocator off so that each object has ASan's guard zones).
`make test` runs XRAY_FUZZ_COUNT cases (default 5,000); the long run, about 100,000 cases:

    XRAY_FUZZ_COUNT=100000 .venv/bin/python -m pytest -q -rA tests/shared/test_fuzz_kernels.py

`test_the_harness_reports_a_bad_access` builds an out-of-bounds read and a signed overflow the same
way and runs them the same way: they must be reported, so a clean fuzz run means something.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COUNT = int(os.environ.get("XRAY_FUZZ_COUNT", "5000"))
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g", "-O1"]
REPORT_MARKS = ("ERROR: AddressSanitizer", "runtime error:")  # ASan's and UBSan's first report lines

BAD_ACCESS_C = r"""
#include <Python.h>
#include <limits.h>
static PyObject *read_past_end(PyObject *self, PyObject *args) {  /* the byte after a buffer's end */
    Py_buffer buffer;
    if (!PyArg_ParseTuple(args, "y*", &buffer))
        return NULL;
    char c = ((const char *)buffer.buf)[buffer.len];
    PyBuffer_Release(&buffer);
    return PyLong_FromLong(c);
}
static PyObject *overflow(PyObject *self, PyObject *unused) {
    volatile int big = INT_MAX;
    return PyLong_FromLong(big + 1);
}
static PyMethodDef methods[] = {{"read_past_end", read_past_end, METH_VARARGS, ""},
                                {"overflow", overflow, METH_NOARGS, ""}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "bad_access", "", -1, methods};
PyMODINIT_FUNC PyInit_bad_access(void) { return PyModule_Create(&module); }
"""


def _libasan() -> str:
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc (Debian package gcc) to build the sanitized kernels")
    path = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    if not os.path.isabs(path):
        pytest.skip("needs AddressSanitizer's runtime (Debian package libasan8, installed with gcc)")
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").exists():
        pytest.skip("needs Python's headers (Debian package python3-dev)")
    return path


def build(sources: dict[str, Path], folder: Path) -> Path:
    """Compile each source as the extension module `name` into `folder`, with the sanitizers."""
    include, suffix = sysconfig.get_paths()["include"], sysconfig.get_config_var("EXT_SUFFIX")
    for name, source in sources.items():
        command = ["gcc", *SANITIZE, "-ffp-contract=off", "-shared", "-fPIC", f"-I{include}", str(source),
                   "-o", str(folder / f"{name}{suffix}")]
        done = subprocess.run(command, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    return folder


def run_sanitized(libasan: str, *args: str, timeout: float) -> tuple[subprocess.CompletedProcess[str], str]:
    """Run Python with the sanitizers' runtime; return the process and its sanitizer report ('' if none)."""
    env = dict(os.environ, LD_PRELOAD=libasan, PYTHONMALLOC="malloc", PYTHONPATH=str(ROOT),
               ASAN_OPTIONS="detect_leaks=0", UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")
    done = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    start = min((done.stderr.find(m) for m in REPORT_MARKS if m in done.stderr), default=-1)
    return done, done.stderr[start:] if start >= 0 else ""


@pytest.fixture(scope="module")
def libasan() -> str:
    return _libasan()


@pytest.mark.slow
@pytest.mark.timeout(300 + COUNT // 10)
def test_kernels_survive_mutated_pngs_and_odd_shapes(libasan: str, data_dir: Path, tmp_path: Path) -> None:
    lib = build({name: ROOT / "shared" / f"{name}.c" for name in ("_png_unfilter", "_resample")}, tmp_path)
    done, report = run_sanitized(libasan, "-m", "tests.shared.fuzz_kernels", "--lib", str(lib), "--data",
                                 str(data_dir), "--count", str(COUNT), timeout=240 + COUNT // 10)
    assert not report, report
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads(done.stdout.splitlines()[-1])
    print(summary)  # shown by `pytest -rA`: the counts per check
    assert summary["cases"] == COUNT
    assert {Path(f).parent for f in summary["modules"].values()} == {lib}  # the sanitized builds ran
    assert summary["png_fast decoded, same pixels as Pillow"] > COUNT // 5  # many mutants reach the pixels
    assert all(summary.get(f"unfilter bpp {bpp} same as Pillow", 0) > 0 for bpp in (1, 2, 3, 4))


@pytest.mark.parametrize(("call", "expected"), [("read_past_end(numpy.zeros(16, 'u1'))", "heap-buffer-overflow"),
                                                ("overflow()", "signed integer overflow")])
def test_the_harness_reports_a_bad_access(libasan: str, tmp_path: Path, call: str, expected: str) -> None:
    (tmp_path / "bad_access.c").write_text(BAD_ACCESS_C)
    lib = build({"bad_access": tmp_path / "bad_access.c"}, tmp_path)
    done, report = run_sanitized(libasan, "-c", f"import sys; sys.path.insert(0, {str(lib)!r}); "
                                 f"import numpy, bad_access; bad_access.{call}", timeout=60)
    assert expected in report and done.returncode != 0, done.stderr[-2000:]
