"""`POST /api/predict`: the Gradio WebUI's batch call, so its users' scripts run unchanged.

A script posts `{"data": [image, prompt, resolution, num_frames, fps, steps, guidance_scale,
(negative_prompt, seed, model)]}`, the image a `{"name", "data": "data:image/png;base64,..."}` object
or a bare data URL; the call blocks until the job ends and answers `{"data": [VIDEO_URL], ...}`.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import secrets
import time

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from daemon.db.tables import JobState
from daemon.errors import InputRejected
from daemon.jobs.queue import FINISHED_STATES
from daemon.logs import get_logger
from daemon.web import actions, queries
from daemon.web.context import WebContext, bearer_scheme, guard, web
from daemon.web.errors import Conflict, Invalid, TimedOut, TooLarge
from daemon.web.submit import submission_key

log = get_logger("i2vd.web")

# The WebUI's inputs in order; the first seven are required, as its scripts always send them.
FIELDS = ("image", "prompt", "resolution", "num_frames", "fps", "steps", "guidance_scale",
          "negative_prompt", "seed", "model")
REQUIRED = 7
SUFFIXES = {"image/png": ".png", "image/jpeg": ".jpg", "image/jpg": ".jpg", "image/webp": ".webp"}
DATA_URL = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?:;[\w-]+=[^;,]*)*;base64,(?P<data>.*)", re.S)
POLL_SECONDS = 0.5
JSON_OVERHEAD_BYTES = 256 * 1024  # the prompts and numbers around the image's base64

router = APIRouter(prefix="/api", dependencies=[Depends(guard), Depends(bearer_scheme)])

EXAMPLE = {"data": [{"name": "input.png", "data": "data:image/png;base64,iVBORw0KGgo..."},
                    "waves rolling onto a beach", 512, 16, 8, 50, 9.0]}


@router.post("/predict", summary="The Gradio WebUI's batch call: blocks until the video is made",
             openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                 "schema": {"type": "object", "required": ["data"],
                            "properties": {"data": {"type": "array"}, "fn_index": {}, "session_hash": {}}},
                 "example": EXAMPLE}}}})
async def predict(request: Request, ctx: WebContext = Depends(web)):
    """`data`: image, prompt, resolution, num_frames, fps, steps, guidance_scale, then optionally
    negative_prompt, seed, model. `fn_index` and `session_hash` are accepted and ignored. Answers
    `{"data": [VIDEO_URL], "is_generating": false, "duration", "average_duration"}`; 504 with the job's
    id when `predict_timeout_seconds` pass first (the job runs on)."""
    started = time.monotonic()
    name, image, fields = parse(await read_json(request, ctx.settings.max_image_bytes))
    key = submission_key(request.headers.get("idempotency-key") or secrets.token_urlsafe(16), 0)
    try:
        job, created = await run_in_threadpool(ctx.submitter.submit, fields, name, io.BytesIO(image), key)
    except InputRejected as rejection:  # the sidecar's errors name their fields; the image's name none
        rejection.field_errors = rejection.field_errors or [{"field": "image", "message": str(rejection)}]
        raise
    log.info("web_predict_submitted", job_id=job.id, created=created)
    base = str(request.base_url).rstrip("/")
    deadline = started + ctx.settings.predict_timeout_seconds
    while job.state not in FINISHED_STATES:
        if time.monotonic() >= deadline or ctx.stopping.is_set() or await request.is_disconnected():
            raise TimedOut("timeout", f"Job {job.id} is still {job.state.value}; it goes on running.",
                           f"Follow it at {base}/api/jobs/{job.id} (or raise predict_timeout_seconds).",
                           [{"field": "job_id", "message": str(job.id)}])
        await anyio.sleep(POLL_SECONDS)
        job = await run_in_threadpool(actions.job, ctx, job.id)  # pruned meanwhile: 404
    if job.state == JobState.CANCELLED:
        raise Conflict("cancelled", f"Job {job.id} was cancelled.")
    if job.state == JobState.FAILED:
        raise Invalid(job.error_code or "generation_error", job.error_message or f"Job {job.id} failed.",
                      f"Details at {base}/api/jobs/{job.id}.")
    duration = time.monotonic() - started
    average = await run_in_threadpool(queries.average_duration, ctx.sessions)
    return JSONResponse({"data": [f"{base}/api/jobs/{job.id}/video"], "is_generating": False,
                         "duration": round(duration, 3), "average_duration": round(average or duration, 3)})


async def read_json(request: Request, max_image_bytes: int) -> dict:
    """The JSON body, read only up to what one base64 image of the size limit needs."""
    limit = max_image_bytes * 4 // 3 + JSON_OVERHEAD_BYTES
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise TooLarge("image_too_large", f"The request is larger than {limit} bytes.",
                           "Shrink the image or raise max_image_bytes.")
    try:
        payload = json.loads(body)
    except ValueError:
        raise Invalid("invalid_request", "The body is not JSON.",
                      field_errors=[{"field": "(body)", "message": "not JSON"}]) from None
    if not isinstance(payload, dict):
        raise Invalid("invalid_request", "The body must be a JSON object with 'data'.",
                      field_errors=[{"field": "(body)", "message": "not an object"}])
    return payload


def parse(payload: dict) -> tuple[str, bytes, dict[str, str]]:
    """(image file name, image bytes, sidecar fields as the form would send them) from Gradio's `data`."""
    data = payload.get("data")
    if not isinstance(data, list) or not REQUIRED <= len(data) <= len(FIELDS):
        raise Invalid("invalid_request", f"'data' must be a list of {REQUIRED} to {len(FIELDS)} values: "
                      f"{', '.join(FIELDS)}.", field_errors=[{"field": "data", "message": "wrong number of values"}])
    name, image = _image(data[0])
    fields = {}
    for field, value in zip(FIELDS[1:], data[1:]):
        if value is None or value == "":
            continue
        if isinstance(value, float) and value.is_integer() and field != "guidance_scale":
            value = int(value)  # Gradio's number widgets send 16.0 for 16
        if isinstance(value, (dict, list, bool)):
            raise Invalid("invalid_sidecar", f"{field} must be a number or text.",
                          field_errors=[{"field": field, "message": "must be a number or text"}])
        fields[field] = value if isinstance(value, str) else json.dumps(value)
    return name, image, fields


def _image(value: object) -> tuple[str, bytes]:
    name = None
    if isinstance(value, dict):
        name, value = value.get("name") or value.get("orig_name"), value.get("data")
    match = DATA_URL.fullmatch(value.strip()) if isinstance(value, str) else None
    suffix = SUFFIXES.get((match.group("mime") or "").lower()) if match else None
    if match is None or suffix is None:
        raise Invalid("not_an_image", "The image must be a data URL: data:image/png;base64,... (PNG, JPEG or WEBP).",
                      field_errors=[{"field": "image", "message": "not a base64 image data URL"}])
    try:
        image = base64.b64decode(match.group("data"), validate=True)
    except (binascii.Error, ValueError):
        raise Invalid("not_an_image", "The image's base64 data cannot be read.",
                      field_errors=[{"field": "image", "message": "invalid base64"}]) from None
    stem = str(name).rsplit("/", 1)[-1].rsplit(".", 1)[0] if isinstance(name, str) and name.strip() else "input"
    return stem + suffix, image
