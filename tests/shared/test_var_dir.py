"""Where `xray up` keeps its state: `./var` of the folder it is started from, or XRAY_VAR_DIR; never
the source checkout (nor site-packages for an installed copy)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from shared.config import PROJECT_ROOT

# What `xray up` derives from the settings before it starts anything: the database, storage, the
# secret key's file and the embedded Redis server's data folder.
PROBE = """
import json
from cli.up import embedded_redis
from shared.config import load_settings
s = load_settings()
argv = list(embedded_redis(s, 1).argv)
print(json.dumps({"var": str(s.var_dir), "db": s.database_url, "storage": str(s.storage_dir),
                  "redis": argv[argv.index("--dir") + 1]}))
"""


def resolve_in(cwd: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in {"XRAY_VAR_DIR", "DATABASE_URL", "STORAGE_DIR", "REDIS_URL"}}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=cwd, env=env, check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out)


def test_state_follows_the_folder_started_from(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    a, b = resolve_in(first), resolve_in(second)
    assert a["var"] == str(first / "var") and b["var"] == str(second / "var")
    for where, found in ((first, a), (second, b)):
        assert found["db"] == f"sqlite:///{where / 'var' / 'xray.db'}"
        assert found["storage"] == str(where / "var" / "storage")
        assert found["redis"] == str(where / "var" / "redis")
        assert not any(value.find(str(PROJECT_ROOT / "var")) >= 0 for value in found.values())


def test_xray_var_dir_wins_and_is_made_absolute(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    found = resolve_in(tmp_path / "elsewhere", XRAY_VAR_DIR="state")
    assert found["var"] == str(tmp_path / "elsewhere" / "state")
    assert found["redis"] == str(tmp_path / "elsewhere" / "state" / "redis")
    assert resolve_in(tmp_path, XRAY_VAR_DIR=str(tmp_path / "x"))["var"] == str(tmp_path / "x")
