"""worker/allocator.py: a worker process reuses the pages of one study for the next."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shared.config import PROJECT_ROOT

PROBE = """
import json, resource, sys
from pathlib import Path
from shared.config import ImageLimits
from shared.classifier import preprocess
from shared.images import read_image
if sys.argv[1] == "tuned":
    from worker.allocator import keep_freed_memory
    assert keep_freed_memory()
data = [Path(p).read_bytes() for p in sys.argv[2:]]
for d in data:  # warm: imports, first allocations
    preprocess(read_image(d, ImageLimits()).source, 224)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    for d in data:
        preprocess(read_image(d, ImageLimits()).source, 224)
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before))
"""


def _page_faults(mode: str, images: list[Path]) -> int:
    done = subprocess.run([sys.executable, "-c", PROBE, mode, *map(str, images)], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=120, check=True)
    return int(json.loads(done.stdout.strip().splitlines()[-1]))


def test_decoding_studies_reuses_pages_once_tuned(nih_full_images: list[Path]) -> None:
    images = [p for p in nih_full_images if p.stat().st_size > 300_000][:3]  # 1024 px PNGs
    if len(images) < 3:
        pytest.skip("needs three 1024 px nih-full PNGs")
    default, tuned = _page_faults("default", images), _page_faults("tuned", images)
    # 15 decodes of 1024 px PNGs: each inflates 1 MB and decodes 1 MB into new pages by default.
    assert default > 15 * 256, default
    assert tuned < default / 10, (tuned, default)
