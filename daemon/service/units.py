"""systemd units: the shipped ones, rendered with this install's paths, and the installed ones."""

from __future__ import annotations

import grp
import math
import os
import pwd
import re
import shutil
import sys
from collections.abc import Iterable
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Installed:
    """What `install_units` wrote, and the supplementary groups it left out because the host lacks them."""

    paths: list[Path]
    missing_groups: tuple[str, ...]


def split_groups(names: Iterable[str]) -> tuple[list[str], list[str]]:
    """The group names that exist on this host, and those that do not."""
    present: list[str] = []
    missing: list[str] = []
    for name in names:
        (present if group_exists(name) else missing).append(name)
    return present, missing


def group_exists(name: str) -> bool:
    """Whether this host knows the group (files, LDAP, whatever NSS asks)."""
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def user_exists(name: str) -> bool:
    """Whether this host knows the user."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def render(text: str, *, executable: Path, inbox: Path, outputs: Path, stop_grace_seconds: float,
           supplementary_groups: Iterable[str] | None = None) -> str:
    """A shipped unit with this install's paths, a stop timeout that fits the grace time and, when given,
    only these supplementary groups (systemd refuses to start a unit that names a missing group)."""
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
    text = re.sub(r"^TimeoutStopSec=.*$", f"TimeoutStopSec={stop_timeout}", text, flags=re.MULTILINE)
    if supplementary_groups is not None:
        groups = " ".join(supplementary_groups)
        text = re.sub(r"^SupplementaryGroups=.*\n", f"SupplementaryGroups={groups}\n" if groups else "", text,
                      flags=re.MULTILINE)
    return text


def supplementary_groups(text: str) -> list[str]:
    """The groups a unit's `SupplementaryGroups=` lines name."""
    return [name for line in re.findall(r"^SupplementaryGroups=(.*)$", text, flags=re.MULTILINE)
            for name in line.split()]


def install_units(settings: Settings, output_dir: Path, *, inbox: Path | None = None,
                  outputs: Path | None = None) -> Installed:
    """Write the units into `output_dir`, naming only the supplementary groups that exist on this host."""
    executable = this_executable()
    if executable is None:
        raise I2vdError("cannot find this install's `i2vd` executable; install i2vd with pip first")
    output_dir.mkdir(parents=True, exist_ok=True)
    written, missing_groups = [], []
    for name in UNIT_NAMES:
        shipped = (SYSTEMD_DIR / name).read_text()
        present, missing = split_groups(supplementary_groups(shipped))
        missing_groups += [group for group in missing if group not in missing_groups]
        text = render(shipped, executable=executable, inbox=(inbox or settings.inbox_dir).absolute(),
                      outputs=(outputs or settings.outputs_dir).absolute(),
                      stop_grace_seconds=settings.stop_grace_seconds, supplementary_groups=present)
        dest = output_dir / name
        dest.write_text(text)
        dest.chmod(0o644)
        written.append(dest)
    return Installed(written, tuple(missing_groups))


@dataclass(frozen=True)
class InstalledUnit:
    """An installed unit file, read back: what it runs and as whom."""

    path: Path
    executable: str | None
    user: str | None
    groups: tuple[str, ...]  # Group= and SupplementaryGroups=


def installed_units(dirs: tuple[Path, ...] = UNIT_DIRS) -> list[InstalledUnit]:
    """Installed i2vd units, the first found for each name (as systemd picks)."""
    found = []
    for name in UNIT_NAMES:
        for directory in dirs:
            path = directory / name
            if path.is_file():
                found.append(read_unit(path))
                break
    return found


def read_unit(path: Path) -> InstalledUnit:
    """A unit file's ExecStart executable, User= and groups (the last User=/Group= wins, as in systemd)."""
    text = path.read_text()
    executable = re.search(r"^ExecStart=[-@:+!]*(\S+)", text, flags=re.MULTILINE)
    user = re.findall(r"^User=(\S*)", text, flags=re.MULTILINE)
    group = re.findall(r"^Group=(\S*)", text, flags=re.MULTILINE)
    return InstalledUnit(path, executable.group(1) if executable else None, user[-1] if user else None,
                         tuple(filter(None, group[-1:])) + tuple(supplementary_groups(text)))
