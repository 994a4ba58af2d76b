"""What the page's buttons and the API both do to a job: look it up, cancel, retry, reprioritise."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Path

from daemon.db.tables import Job, JobState
from daemon.intake.sidecar import Sidecar
from daemon.logs import get_logger
from daemon.web.context import WebContext
from daemon.web.errors import Conflict, Invalid, NotFound

log = get_logger("i2vd.web")

CANCELLABLE = (JobState.QUEUED, JobState.RUNNING)
RESERVED_FORM_FIELDS = ("image", "submission", "next")
MAX_ID = 2**63 - 1  # the database's BIGINT: a larger id is a bad request, not an overflow
WHOLE_NUMBER = re.compile(r"[+-]?[0-9]{1,4}")

JobId = Annotated[int, Path(ge=1, le=MAX_ID, description="A job's id")]


def job(ctx: WebContext, job_id: int) -> Job:
    found = ctx.queue.get(job_id)
    if found is None:
        raise NotFound("not_found", f"There is no job {job_id}.")
    return found


def cancel(ctx: WebContext, job_id: int) -> JobState:
    before = job(ctx, job_id)
    state = ctx.queue.cancel(job_id) if before.state in CANCELLABLE else before.state
    if state is None:
        raise NotFound("not_found", f"There is no job {job_id}.")
    if state not in (JobState.CANCELLED, JobState.RUNNING) or before.state not in CANCELLABLE:
        raise Conflict("not_cancellable", f"Job {job_id} is {state.value}; nothing to cancel.")
    log.info("web_job_cancel", job_id=job_id, state=state.value)
    return state


def retry(ctx: WebContext, job_id: int) -> Job:
    new = ctx.queue.retry(job_id, ctx.submitter.intake.catalog)  # a QueueError becomes a response in errors.py
    log.info("web_job_retried", job_id=new.id, retried_from_id=job_id)
    return new


def set_priority(ctx: WebContext, job_id: int, value: str) -> int:
    """The new priority; refuses anything but a whole number within the sidecar's range."""
    bounds = {type(m).__name__: m for m in Sidecar.model_fields["priority"].metadata}
    low, high = bounds["Ge"].ge, bounds["Le"].le
    if not WHOLE_NUMBER.fullmatch(value.strip()) or not low <= int(value) <= high:
        raise Invalid("invalid_priority", f"Priority must be a whole number from {low} to {high}.",
                      field_errors=[{"field": "priority", "message": f"must be {low}..{high}"}])
    job(ctx, job_id)
    if not ctx.queue.set_priority(job_id, int(value)):
        raise Conflict("not_waiting", f"Job {job_id} is no longer waiting; its priority is fixed.")
    return int(value)


def form_fields(form) -> dict[str, str]:
    """The sidecar fields of a form: every text field but the page's own, each at most once."""
    fields: dict[str, str] = {}
    for name, value in form.multi_items():
        if name in RESERVED_FORM_FIELDS or not isinstance(value, str):
            continue
        if name in fields:
            raise Invalid("invalid_request", f"The field {name[:100]} is given twice.",
                          field_errors=[{"field": name[:100], "message": "given twice"}])
        fields[name] = value
    return fields


def next_path(form, default: str) -> str:
    """Where to go after a button: a path on this site only (no '//host' or scheme)."""
    target = str(form.get("next", ""))
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else default
