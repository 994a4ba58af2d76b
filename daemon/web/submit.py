"""A picture and sidecar fields from the web, recorded exactly once like an inbox pair.

The upload and a sidecar written from the fields are staged under inbox/done/web/.incoming/, then
the job is created and Intake.complete moves both to inbox/done/web/ and queues it, exactly as for
a dropped pair. A crash in between leaves a job in state intake whose files are at its source paths,
and any daemon's intake recovery finishes it.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import shutil
import threading
import typing
from pathlib import Path, PurePath
from typing import BinaryIO

from daemon.errors import InputRejected
from daemon.files import unique_stem
from daemon.intake.images import IMAGE_SUFFIXES, check_image
from daemon.intake.ingest import Intake
from daemon.db.tables import Job
from daemon.jobs.queue import JobQueue, NewJob
from daemon.settings import Settings
from daemon.web.errors import Conflict
from daemon.intake.sidecar import Sidecar, params_for, parse_sidecar

WEB_DIR = "web"  # inbox/done/web/: where web uploads are kept, beside the dropped pairs' done/ files
COPY_CHUNK = 1024 * 1024
_UNSAFE_NAME = re.compile(r"[^\w.\- ]+")
# Plain ASCII numbers of a sane length; anything else stays text for the sidecar's rules to name.
_INTEGER = re.compile(r"[+-]?[0-9]{1,30}")
_DECIMAL = re.compile(r"[+-]?[0-9]{1,30}(\.[0-9]{0,30})?|[+-]?\.[0-9]{1,30}")
MAX_STEM_BYTES = 120  # well under a file system's 255-byte names, with room for "-12" and ".json"
_naming = threading.Lock()  # two uploads named alike must not pick the same done/ name


def sidecar_fields() -> list[str]:
    """The sidecar's field names, in schema order: the form and the API take exactly these."""
    return list(Sidecar.model_fields)


def sidecar_bytes(fields: dict[str, str]) -> bytes:
    """The sidecar a person would have written: empty fields left out, numbers as JSON numbers.

    Text that is not a number stays text, so the sidecar's own validation names the field.
    """
    data: dict[str, object] = {}
    for name, raw in fields.items():
        value = raw.strip()
        if not value:
            continue
        data[name] = _typed(name, value)
    return json.dumps(data, ensure_ascii=False).encode()


def _typed(name: str, value: str) -> object:
    field = Sidecar.model_fields.get(name)
    kinds = set(typing.get_args(field.annotation)) | {field.annotation} if field else set()
    flat = {typing.get_args(k)[0] if typing.get_origin(k) is typing.Annotated else k for k in kinds}
    if int in flat and _INTEGER.fullmatch(value):
        return int(value)
    if float in flat and _DECIMAL.fullmatch(value):
        return float(value)
    return value


def submission_key(client_key: str, index: int) -> str:
    """The job's idempotency key: the same form (or Idempotency-Key) sent twice is one job."""
    return "web-" + hashlib.sha256(f"{client_key}\0{index}".encode()).hexdigest()[:60]


def safe_image_name(filename: str | None) -> str:
    """The upload's own file name without folders or odd characters; an image suffix is required."""
    name = _UNSAFE_NAME.sub("_", Path((filename or "").replace("\\", "/")).name).strip(" .") or "upload"
    if not name.lower().endswith(IMAGE_SUFFIXES):
        raise InputRejected("not_an_image", f"{name[:200]} is not a .png, .jpg, .jpeg or .webp file.",
                            hint="Upload a PNG, JPEG or WEBP image.")
    stem, suffix = name[: -len(Path(name).suffix)], Path(name).suffix
    stem = stem.encode()[:MAX_STEM_BYTES].decode(errors="ignore").strip(" .") or "upload"
    return stem + suffix


class WebSubmitter:
    """Turns one upload into one queued job."""

    def __init__(self, settings: Settings, queue: JobQueue) -> None:
        self.settings = settings
        self.queue = queue
        self.intake = Intake(settings, queue)

    def submit(self, fields: dict[str, str], filename: str | None, image: BinaryIO, key: str) -> tuple[Job, bool]:
        """(job, created); raises InputRejected with the sidecar's and intake's codes and messages.

        A rejection is an input.rejected event too, as for a dropped pair (nothing goes to failed/:
        the person who uploaded it is told at once).
        """
        try:
            return self._submit(fields, filename, image, key)
        except InputRejected as rejection:
            self.queue.record_rejection(rejection.code, str(rejection), [Path(filename or "").name],
                                        hint=rejection.hint, folder=WEB_DIR)
            raise

    def _submit(self, fields: dict[str, str], filename: str | None, image: BinaryIO, key: str) -> tuple[Job, bool]:
        raw = sidecar_bytes(fields)
        sidecar = parse_sidecar(raw)
        model, params = params_for(sidecar, PurePath(), self.intake.catalog, self.settings)  # the rules before the image, as intake
        name = safe_image_name(filename)
        stem, suffix = name[: -len(Path(name).suffix)], Path(name).suffix.lower()
        s = self.settings
        done_dir = s.done_dir / WEB_DIR
        staging = done_dir / ".incoming" / secrets.token_hex(8)
        staging.mkdir(parents=True)
        created = False
        try:
            staged_image = staging / f"{stem}{suffix}"
            with open(staged_image, "wb") as out:  # the request's size is bounded already (BodyLimit)
                shutil.copyfileobj(image, out, COPY_CHUNK)
            # Header only: a whole decode here cost ~250 MB per 8000x8000 upload (the worker decodes it).
            check_image(staged_image, max_bytes=s.max_image_bytes, max_pixels=s.max_image_pixels, decode=False)
            staged_sidecar = staging / f"{stem}.json"
            staged_sidecar.write_bytes(raw)
            with _naming:
                base = unique_stem(done_dir, stem, (suffix, ".json"))
                job, created = self.queue.create(NewJob(
                    idempotency_key=key, params=params.to_dict(), model=model.name, priority=sidecar.priority,
                    output_stem=sidecar.output_name or stem, output_subdir="",
                    source_image=str(staged_image), source_sidecar=str(staged_sidecar),
                    image_path=str(done_dir / f"{base}{suffix}"), sidecar_path=str(done_dir / f"{base}.json"),
                ))
                if created:
                    self.intake.complete(job)
                elif not _same_request(job, staged_image, raw):
                    raise Conflict("idempotency_key_reused",
                                   f"This Idempotency-Key made job {job.id} from another picture or fields.",
                                   "Use a new key for a new request.")
        except BaseException:
            if not created:  # once a job names the staged files, intake recovery needs them
                shutil.rmtree(staging, ignore_errors=True)
            raise
        shutil.rmtree(staging, ignore_errors=True)  # empty now, or holding a repeated request's copy
        return self.queue.get(job.id) or job, created




def _same_request(job: Job, image: Path, sidecar: bytes) -> bool:
    """Whether a repeated key brings the same picture and fields as the request that made `job`."""
    for image_path, sidecar_path in ((job.image_path, job.sidecar_path), (job.source_image, job.source_sidecar)):
        if sidecar_path is None:
            continue
        try:
            kept_sidecar = Path(sidecar_path).read_bytes()
            kept_image = _digest(Path(image_path))
        except OSError:
            continue
        return kept_sidecar == sidecar and kept_image == _digest(image)
    return True  # the first request's files are gone (pruned): nothing to compare, as before


def _digest(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()
