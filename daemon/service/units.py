"""systemd units: the shipped ones, rendered with this install's paths, and the installed ones."""

from __future__ import annotations

import math
import os
import re
import shutil
import sys
from pathlib import Path

from daemon.errors import I2vdError
from daemon.settings import Settings

SYSTEMD_DIR = Path(__file__).parent / "systemd"  # a link to the repository's systemd/; a copy in the wheel
README = SYSTEMD_DIR.resolve().parent / "README.md"  # the repository's; an install from the wheel has none
UNIT_NAMES = ("i2vd.service", "i2vd@.service", "i2vd-web.service")
UNIT_DIRS = (Path("/etc/systemd/system"), Path("/usr/local/lib/systemd/system"),
             Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))

# The shipped units name these example paths; rendering puts this install's in their place.
SHIPPED_EXECUTABLE = "/opt/i2vd/.venv/bin/i2vd"
SHIPPED_README = "/opt/i2vd/README.md"
SHIPPED_INBOX = "/srv/i2vd/inbox"
SHIPPED_OUTPUTS = "/srv/i2vd/outputs"
# After the grace time a job still gets one more denoising step (seconds for a large preset on a small
# GPU), then its requeue and the database close; only then may systemd SIGKILL.
STOP_MARGIN_SECONDS = 50
_UNSAFE = re.compile(r"[\s\"'\\%$;]")  # quoting, specifier and variable syntax in unit files


def this_executable() -> Path | None:
    """The `i2vd` script of this install (beside the running Python), else the one on PATH."""
    beside = Path(sys.executable).parent / "i2vd"  # not resolved: a venv's python is a symlink
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("i2vd")
    return Path(found) if found else None


def render(text: str, *, executable: Path, inbox: Path, outputs: Path, stop_grace_seconds: float) -> str:
    """A shipped unit with this install's paths and a stop timeout that fits the grace time."""
    for path in (executable, inbox, outputs):
        if not path.is_absolute() or _UNSAFE.search(str(path)):
            raise I2vdError(f"{path}: unit paths must be absolute, without spaces, quotes, '%', '$' or "
                            "backslashes; use a symlink without them")
    readme = f"Documentation=file://{README}\n" if README.is_file() else ""
    text = (text.replace(f"Documentation=file://{SHIPPED_README}\n", readme)
            .replace(SHIPPED_EXECUTABLE, str(executable))
            .replace(SHIPPED_INBOX, str(inbox))
            .replace(SHIPPED_OUTPUTS, str(outputs)))
    stop_timeout = math.ceil(stop_grace_seconds + STOP_MARGIN_SECONDS)
    return re.sub(r"^TimeoutStopSec=.*$", f"TimeoutStopSec={stop_timeout}", text, flags=re.MULTILINE)


def install_units(settings: Settings, output_dir: Path, *, inbox: Path | None = None,
                  outputs: Path | None = None) -> list[Path]:
    """Write both units into `output_dir`; returns their paths."""
    executable = this_executable()
    if executable is None:
        raise I2vdError("cannot find this install's `i2vd` executable; install i2vd with pip first")
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in UNIT_NAMES:
        text = render((SYSTEMD_DIR / name).read_text(), executable=executable,
                      inbox=(inbox or settings.inbox_dir).absolute(),
                      outputs=(outputs or settings.outputs_dir).absolute(),
                      stop_grace_seconds=settings.stop_grace_seconds)
        dest = output_dir / name
        dest.write_text(text)
        dest.chmod(0o644)
        written.append(dest)
    return written


def installed_units(dirs: tuple[Path, ...] = UNIT_DIRS) -> dict[Path, str | None]:
    """Installed i2vd units (the first found for each name, as systemd picks) and their executables."""
    found: dict[Path, str | None] = {}
    for name in UNIT_NAMES:
        for directory in dirs:
            path = directory / name
            if path.is_file():
                match = re.search(r"^ExecStart=[-@:+!]*(\S+)", path.read_text(), flags=re.MULTILINE)
                found[path] = match.group(1) if match else None
                break
    return found
