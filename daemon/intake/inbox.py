"""The inbox as names: which files may be inputs, how they pair up, and how their names are shown.

Names are taken as the OS gives them (undecodable bytes as surrogates). What is shown to people
keeps those bytes as `\\xNN`; names i2vd makes (done/, outputs) replace them with U+FFFD.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from daemon.files import TEMP_PREFIX
from daemon.intake.images import is_image_name
from daemon.settings import Settings

SIDECAR_SUFFIX = ".json"
TEMP_SUFFIXES = (".part", ".partial", ".tmp", ".temp", ".crdownload", ".download", ".swp", "~")
TEMP_PREFIXES = (".", "~$", ".~lock", TEMP_PREFIX)


def is_temporary_name(name: str) -> bool:
    """Hidden files and the names copy tools, browsers and editors write before the final rename."""
    lower = name.lower()
    return lower.startswith(TEMP_PREFIXES) or lower.endswith(TEMP_SUFFIXES)


def is_sidecar_name(name: str) -> bool:
    return name.lower().endswith(SIDECAR_SUFFIX)


def is_input_name(name: str) -> bool:
    """An image or a sidecar, by its name."""
    return is_image_name(name) or is_sidecar_name(name)


def stem_of(name: str) -> str:
    """The exact stem: Beach.png and beach.png are two different files on Linux."""
    suffix = Path(name).suffix
    return name[: -len(suffix)] if suffix else name


@dataclass(frozen=True)
class Pair:
    """An image and its sidecar, one of them possibly missing, under one stem in one folder."""

    directory: Path
    stem: str
    image: Path | None
    sidecar: Path | None

    @property
    def files(self) -> list[Path]:
        return [p for p in (self.image, self.sidecar) if p is not None]


def group_pairs(paths: Iterable[Path]) -> dict[tuple[Path, str], list[Path]]:
    """Input files by (folder, exact stem): the files that pair up."""
    groups: dict[tuple[Path, str], list[Path]] = {}
    for path in paths:
        groups.setdefault((path.parent, stem_of(path.name)), []).append(path)
    return groups


# -- names as the OS gives them ----------------------------------------------------------------


def shown(text: str) -> str:
    """`text` for logs, error reports and terminals: undecodable name bytes appear as `\\xNN`."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that no file name produced
        return text.encode("utf-8", "backslashreplace").decode()


def safe_name(text: str) -> str:
    """A name for what i2vd creates (done/, outputs): undecodable bytes become U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def path_text(path: Path) -> str:
    """An absolute path as database text: the path itself, or a file:// URI when it is not UTF-8."""
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return path.as_uri()  # percent-encodes the bytes: reversible, and plain ASCII
    return text


def path_from_text(text: str) -> Path:
    """The path `path_text` stored (plain paths are absolute, so never start with file://)."""
    if text.startswith("file://"):
        return Path(os.fsdecode(urllib.parse.unquote_to_bytes(text.removeprefix("file://"))))
    return Path(text)


# -- the inbox as a listing -------------------------------------------------------------------


def is_ignored(settings: Settings, path: Path) -> bool:
    """Outside the inbox, in done/ or failed/, a temporary name, or the outputs/state folder."""
    # On path parts, not Path.relative_to: intake asks this of every file of a big drop, twice.
    inbox, parts = settings.inbox_dir.parts, path.parts
    if len(parts) <= len(inbox) or parts[:len(inbox)] != inbox:
        return True
    rel = parts[len(inbox):]
    if rel[0] in (settings.done_dir.name, settings.failed_dir.name) or any(is_temporary_name(p) for p in rel):
        return True
    return any(parts[:len(ex)] == ex for ex in (settings.outputs_dir.parts, settings.state_dir.parts)
               if len(ex) > len(inbox) and ex[:len(inbox)] == inbox)


def inbox_candidates(settings: Settings) -> Iterator[Path]:
    """Every file in the inbox that may be an input, and folders named like one (rejected, not walked)."""
    for root, dirs, files in os.walk(settings.inbox_dir):
        root_path = Path(root)
        keep = []
        for name in dirs:
            path = root_path / name
            if is_ignored(settings, path):
                continue
            if is_input_name(name):
                yield path
            else:
                keep.append(name)
        dirs[:] = keep
        for name in files:
            yield root_path / name


def lone_halves(settings: Settings) -> int | None:
    """Inputs in the inbox now whose other half is not there (for `i2vd status`); None: no inbox here."""
    if not settings.inbox_dir.is_dir():
        return None
    groups = group_pairs(path for path in inbox_candidates(settings)
                         if not is_ignored(settings, path) and is_input_name(path.name))
    return sum(len(paths) for paths in groups.values()
               if all(is_image_name(p.name) for p in paths) or not any(is_image_name(p.name) for p in paths))
