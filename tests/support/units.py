"""`i2vd install-systemd` run as a user would, and the rendered units read back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def install(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("I2VD_")}
    return subprocess.run([sys.executable, "-m", "daemon.cli", "install-systemd", "--output", str(tmp_path),
                           *args], env={**clean, **env}, cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)


def directives(unit: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found
