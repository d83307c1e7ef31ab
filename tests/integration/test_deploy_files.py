"""docker-compose.yml and the Dockerfile, checked by reading them (Docker does not run here): every
`xray` command a service runs parses with the real command line, and the image copies every package
the project installs."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]


def test_every_compose_command_parses() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    commands = [s["command"] for s in services.values() if isinstance(s.get("command"), list)]
    xray = [c for c in commands if c[0] == "xray"]
    assert {c[1] for c in xray} >= {"db", "worker", "dicom"}
    for command in xray:
        args = build_parser().parse_args(command[1:])
        assert callable(args.func), command


def test_the_image_copies_every_package() -> None:
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    copied = set(re.findall(r"^COPY (\w+) ", (ROOT / "Dockerfile").read_text(), re.M))
    missing = {p.rstrip("*") for p in packages} - copied
    assert not missing, f"the Dockerfile does not copy {sorted(missing)}"


@pytest.mark.parametrize("name", ["web", "worker", "dicom", "nginx", "migrate"])
def test_services_exist(name: str) -> None:
    assert name in yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
