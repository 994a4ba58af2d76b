"""The web API over real HTTP: submit like a sidecar, list, act on jobs, fetch files, follow events."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import PIL.Image
import pytest
import requests
from sqlalchemy import insert, text
from support.daemons import make_queue, wait_for
from support.files import TINY_SIDECAR
from support.web import finished_job, png, post_job, web, web_factory  # noqa: F401 (fixtures)

from daemon.db.engine import make_engine
from daemon.db.tables import Job, JobState, utcnow
from daemon.errors import InputRejected
from daemon.events.outbox import EventLog
from daemon.intake.ingest import Intake
from daemon.intake.sidecar import parse_sidecar, resolve
from pipeline.backends import RULES


def test_a_submitted_job_is_queued_once_with_its_inputs_kept_like_an_inbox_pair(web):
    r = post_job(web, "my beach.png", fields={"seed": "7", "priority": "2"})
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    job = web.queue.get(job_id)
    assert job.state == JobState.QUEUED and job.priority == 2 and job.output_stem == "my beach"
    assert job.params == {"version": 3, "prompt": "waves on a beach", "negative_prompt": None, "width": 32,
                          "height": 32, "num_frames": 8, "fps": 8, "steps": 10, "guidance_scale": 9.0, "seed": 7,
                          "interpolate": 1, "keep_aspect": False}
    done = web.settings.done_dir / "web"
    assert Path(job.image_path) == done / "my beach.png" and PIL.Image.open(job.image_path).size == (48, 40)
    assert json.loads(Path(job.sidecar_path).read_text()) == {
        "prompt": "waves on a beach", **TINY_SIDECAR, "seed": 7, "priority": 2}
    assert not list((done / ".incoming").iterdir())  # nothing staged is left behind

    # The same Idempotency-Key again (a client retrying after a timeout): the same job, not a second.
    first = post_job(web, "a.png", headers={"Idempotency-Key": "batch-1/a"})
    again = post_job(web, "a.png", headers={"Idempotency-Key": "batch-1/a"})
    assert first.status_code == 201 and again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert sorted(p.name for p in done.iterdir() if p.is_file()) == ["a.json", "a.png", "my beach.json",
                                                                     "my beach.png"]
    # A second upload under a taken name is kept beside it, as intake does.
    other = post_job(web, "a.png")
    assert Path(web.queue.get(other.json()["id"]).image_path).name == "a-1.png"

    shown = requests.get(f"{web.url}/api/jobs/{job_id}", timeout=10).json()
    assert shown["state"] == "queued" and shown["queue_position"] == 1  # priority 2 goes first
    assert shown["links"] == {"page": f"/jobs/{job_id}"} and shown["attempts"] == []


def test_the_form_sent_twice_makes_each_job_once(web):
    form = {"prompt": "two gulls", "submission": "form-token-1", **{k: str(v) for k, v in TINY_SIDECAR.items()}}
    files = [("image", ("gull.png", png())), ("image", ("gull2.png", png()))]
    first = requests.post(f"{web.url}/submit", data=form, files=files, timeout=30)
    again = requests.post(f"{web.url}/submit", data=form, files=files, timeout=30)  # a reload re-POSTs
    assert first.status_code == again.status_code == 200
    assert "job #1" in first.text and "job #2" in first.text and "job #1" in again.text
    assert web.queue.counts()[JobState.QUEUED] == 2


def test_an_upload_cut_short_after_its_job_was_made_is_finished_by_intake_recovery(web, monkeypatch):
    import daemon.intake.ingest

    def disk_full(src, dest):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(daemon.intake.ingest, "move", disk_full)
    assert post_job(web, "storm.png").status_code == 500
    job = web.queue.recent(1)[0]
    assert job.state == JobState.INTAKE and Path(job.source_image).is_file()  # staged files kept for recovery

    monkeypatch.undo()
    Intake(web.settings, web.queue).recover()  # what any daemon's recovery pass does
    job = web.queue.get(job.id)
    assert job.state == JobState.QUEUED and Path(job.image_path) == web.settings.done_dir / "web" / "storm.png"
    assert Path(job.image_path).is_file() and Path(job.sidecar_path).is_file()


def test_rejections_carry_the_sidecar_and_intake_codes_and_messages(web_factory):
    web = web_factory(max_image_pixels=1000, max_image_bytes=20_000)
    cases = {
        "num_frames": post_job(web, fields={"num_frames": "99"}),
        "unknown": post_job(web, fields={"colour": "red"}),
        "text": post_job(web, fields={"steps": "many"}),
        "not_image": post_job(web, "fake.png", data=b"this is not a png"),
        "suffix": post_job(web, "notes.txt"),
        "pixels": post_job(web, "big.png", data=png((100, 100))),
        "bytes": post_job(web, "noise.png", data=b"\x89PNG" + bytes(30_000)),
    }
    bodies = {k: r.json() for k, r in cases.items()}
    expected = parse_sidecar_error({"prompt": "waves on a beach", **TINY_SIDECAR, "num_frames": 99})
    assert cases["num_frames"].status_code == 422
    assert bodies["num_frames"] == expected  # word for word what an error sidecar would say
    assert bodies["unknown"]["code"] == "invalid_sidecar"
    assert bodies["unknown"]["field_errors"] == [{"field": "colour", "message": "unknown field"}]
    assert bodies["text"]["field_errors"][0]["field"] == "steps"
    assert bodies["not_image"]["code"] == "not_an_image" and "fake.png" in bodies["not_image"]["error"]
    assert bodies["suffix"]["code"] == "not_an_image"
    assert bodies["pixels"] == {"code": "image_too_many_pixels", "field_errors": [],
                                "error": "big.png is 100x100 = 10000 pixels; the limit is 1000.",
                                "hint": "Downscale the image or raise max_image_pixels."}
    assert cases["bytes"].status_code == 413 and bodies["bytes"]["code"] == "image_too_large"
    missing = requests.post(f"{web.url}/api/jobs", data={"prompt": "x"}, timeout=10)
    assert missing.status_code == 422 and missing.json()["code"] == "missing_image"
    assert web.queue.counts()[JobState.QUEUED] == 0
    done = web.settings.done_dir / "web"
    assert not [p for p in done.rglob("*") if p.is_file()]
    rejected = EventLog(web.sessions()).since(types=["input.rejected"])
    assert [(r.payload["code"], r.payload["files"], r.payload["folder"]) for r in rejected][3:5] == [
        ("not_an_image", ["fake.png"], "web"), ("not_an_image", ["notes.txt"], "web")]
    failed_page = requests.get(f"{web.url}/results", params={"state": "failed"}, timeout=10).text
    assert "image_too_many_pixels" in failed_page and "big.png is 100x100 = 10000 pixels" in failed_page


def parse_sidecar_error(data: dict) -> dict:
    with pytest.raises(InputRejected) as info:  # checked against the model that runs it, as the form is
        resolve(parse_sidecar(json.dumps(data).encode()), RULES["i2vgen-xl"], default_preset="standard")
    exc = info.value
    return {"code": exc.code, "error": str(exc), "hint": exc.hint, "field_errors": exc.field_errors}


def test_cancel_retry_priority_and_filters(web):
    ids = [post_job(web, f"p{i}.png", fields={"prompt": f"scene {i} {'lighthouse' if i == 2 else 'forest'}"})
           .json()["id"] for i in range(3)]
    position = lambda i: requests.get(f"{web.url}/api/jobs/{i}", timeout=10).json()["queue_position"]  # noqa: E731
    assert [position(i) for i in ids] == [1, 2, 3]
    r = requests.post(f"{web.url}/api/jobs/{ids[2]}/priority", data={"priority": "5"}, timeout=10)
    assert r.status_code == 200 and [position(i) for i in ids] == [2, 3, 1]
    bad = requests.post(f"{web.url}/api/jobs/{ids[2]}/priority", data={"priority": "11"}, timeout=10)
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_priority"

    assert requests.post(f"{web.url}/api/jobs/{ids[0]}/cancel", timeout=10).json() == {
        "id": ids[0], "state": "cancelled"}
    again = requests.post(f"{web.url}/api/jobs/{ids[0]}/cancel", timeout=10)
    assert again.status_code == 409 and again.json()["code"] == "not_cancellable"
    retried = requests.post(f"{web.url}/api/jobs/{ids[0]}/retry", timeout=10)
    assert retried.status_code == 201
    new = web.queue.get(retried.json()["id"])
    assert new.state == JobState.QUEUED and new.retried_from_id == ids[0]
    assert requests.post(f"{web.url}/api/jobs/{ids[1]}/retry", timeout=10).json()["code"] == "not_retryable"
    assert requests.get(f"{web.url}/api/jobs/999", timeout=10).status_code == 404

    listed = requests.get(f"{web.url}/api/jobs", params={"q": "LIGHTHOUSE"}, timeout=10).json()
    assert [j["id"] for j in listed["jobs"]] == [ids[2]]
    cancelled = requests.get(f"{web.url}/api/jobs", params={"state": "cancelled"}, timeout=10).json()
    assert [j["id"] for j in cancelled["jobs"]] == [ids[0]]
    assert requests.get(f"{web.url}/api/jobs", params={"q": "100%_"}, timeout=10).json()["total"] == 0
    by_model = lambda m: requests.get(f"{web.url}/api/jobs", params={"model": m}, timeout=10).json()  # noqa: E731
    assert by_model("i2vgen-xl")["total"] == 4 and by_model("svd")["total"] == 0  # the default model's name
    assert requests.get(f"{web.url}/api/jobs", params={"state": "nonsense"}, timeout=10).json()["code"] == \
        "invalid_request"

    schema = requests.get(f"{web.url}/api/openapi.json", timeout=10).json()
    assert {"/api/jobs", "/api/jobs/{job_id}", "/api/jobs/{job_id}/cancel", "/api/jobs/{job_id}/retry",
            "/api/jobs/{job_id}/video", "/api/jobs/{job_id}/poster", "/api/events"} <= set(schema["paths"])
    assert not any(path.startswith(("/jobs", "/login", "/fragments")) for path in schema["paths"])


def test_video_and_poster_are_served_by_job_id(web):
    job = finished_job(web)
    plain = finished_job(web, "plain", poster=None)
    r = requests.get(f"{web.url}/api/jobs/{job.id}/video", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"] == "video/mp4"
    assert r.content == Path(job.output_path).read_bytes()
    part = requests.get(f"{web.url}/api/jobs/{job.id}/video", headers={"Range": "bytes=0-9"}, timeout=10)
    assert part.status_code == 206 and len(part.content) == 10  # seeking in the browser's player
    download = requests.get(f"{web.url}/api/jobs/{job.id}/video?download=true", timeout=10)
    assert download.headers["content-disposition"].startswith("attachment")
    poster = requests.get(f"{web.url}/api/jobs/{job.id}/poster", timeout=10)
    assert poster.headers["content-type"] == "image/jpeg"
    assert PIL.Image.open(io.BytesIO(poster.content)).size == (32, 32)
    assert requests.get(f"{web.url}/api/jobs/{plain.id}/poster", timeout=10).json()["code"] == "not_found"
    animated = finished_job(web, "anim", poster=None, preview=True)
    preview = requests.get(f"{web.url}/api/jobs/{animated.id}/preview", timeout=10)
    assert preview.headers["content-type"] == "image/webp"
    assert PIL.Image.open(io.BytesIO(preview.content)).n_frames == 4
    detail = requests.get(f"{web.url}/api/jobs/{job.id}", timeout=10).json()
    assert detail["links"]["poster"] == f"/api/jobs/{job.id}/poster" and detail["metadata"]["frames"] == 8

    page = requests.get(f"{web.url}/jobs/{job.id}", timeout=10).text
    assert f'src="/api/jobs/{job.id}/video"' in page and f'poster="/api/jobs/{job.id}/poster"' in page
    gallery = requests.get(f"{web.url}/results", timeout=10).text
    assert f'src="/api/jobs/{job.id}/poster"' in gallery  # a poster where the metadata names one
    assert f'src="/api/jobs/{animated.id}/preview"' in gallery  # the animation where there is one
    assert f'<video src="/api/jobs/{plain.id}/video"' in gallery  # else the video itself


def read_events(response, count: int, timeout: float = 20) -> list[tuple[int, dict]]:
    """The first `count` events of an SSE response, as (id, event)."""
    events, event_id, deadline = [], None, time.monotonic() + timeout
    for line in response.iter_lines(decode_unicode=True):
        if line.startswith("id: "):
            event_id = int(line[4:])
        elif line.startswith("data: "):
            events.append((event_id, json.loads(line[6:])))
        if len(events) >= count or time.monotonic() > deadline:
            break
    return events


def test_events_stream_from_the_outbox_and_resume_after_last_event_id(web):
    job_id = post_job(web).json()["id"]
    with requests.get(f"{web.url}/api/events", stream=True, timeout=30) as live:
        assert live.headers["content-type"].startswith("text/event-stream")
        time.sleep(1)  # subscribed: from here on, not the job.queued before
        job = web.queue.claim("test:1", 60)
        web.queue.start_attempt(job_id, "test:1", job.params)
        web.queue.progress(job_id, "denoising", 3, 10, owner="test:1")
        events = read_events(live, 2)
    assert [(e["type"], e["job_id"]) for _, e in events] == [("job.started", job_id), ("job.progress", job_id)]
    assert events[1][1]["data"] == {"phase": "denoising", "step": 3, "total": 10}

    # A browser reconnecting sends the last id it saw and gets what it missed, in order.
    started_id = events[0][0]
    with requests.get(f"{web.url}/api/events", headers={"Last-Event-ID": str(started_id)}, stream=True,
                      timeout=30) as resumed:
        assert [e["type"] for _, e in read_events(resumed, 1)] == ["job.progress"]
    with requests.get(f"{web.url}/api/events", params={"after": 0, "types": "job.queued"}, stream=True,
                      timeout=30) as replay:
        assert [(e["type"], e["job_id"]) for _, e in read_events(replay, 1)] == [("job.queued", job_id)]


def test_lists_stay_paginated_and_indexed_with_10000_jobs(web):
    now = utcnow()
    rows = [{"state": JobState.FAILED if i % 10 == 0 else JobState.SUCCEEDED, "priority": 0,
             "idempotency_key": f"seed-{i}", "params": {"prompt": f"scene {i}"}, "output_stem": f"s{i}",
             "output_subdir": "", "source_image": "/in/x.png", "image_path": "/done/x.png", "created_at": now,
             "error_code": "generation_failed" if i % 10 == 0 else None, "cancel_requested": False}
            for i in range(10_000)]
    engine_sessions = web.sessions()
    with engine_sessions() as s:
        s.execute(insert(Job), rows)
        s.commit()
        plan = " ".join(str(r) for r in s.execute(text(
            "EXPLAIN QUERY PLAN SELECT id FROM jobs WHERE state = 'failed' ORDER BY id DESC LIMIT 24")))
    assert "ix_jobs_state_id" in plan and "TEMP B-TREE" not in plan  # an index walk, no sort of all rows

    started = time.monotonic()
    page = requests.get(f"{web.url}/results", params={"state": "failed", "page": 3}, timeout=30)
    assert page.status_code == 200 and "1000 jobs, page 3 of 42" in page.text
    assert page.text.count('class="tile"') == 24
    listed = requests.get(f"{web.url}/api/jobs", params={"q": "scene 999"}, timeout=30).json()
    assert {j["name"] for j in listed["jobs"]} == {"s999", "s9990", "s9991", "s9992", "s9993", "s9994",
                                                    "s9995", "s9996", "s9997", "s9998", "s9999"}
    assert time.monotonic() - started < 10  # generous: a sort or a full render of 10,000 rows is far slower


def test_a_moved_or_replaced_database_file_is_noticed_not_written_blindly(web, tmp_path):
    assert post_job(web).status_code == 201
    state = web.settings.state_dir
    moved = tmp_path / "moved"
    moved.mkdir()
    for path in state.glob("i2vd.sqlite3*"):
        path.rename(moved / path.name)
    refused = post_job(web)
    assert refused.status_code == 503 and refused.json()["code"] == "database_missing"
    assert requests.get(f"{web.url}/", timeout=10).status_code == 503

    fresh = make_queue(web.settings)  # a daemon started: a new, empty database in the same place
    accepted = post_job(web)
    assert accepted.status_code == 201
    assert fresh.get(accepted.json()["id"]) is not None  # in the file daemons read, not the moved one
    assert fresh.counts()[JobState.QUEUED] == 1


def search_finds_any_part_of_a_prompt_alone_or_with_filters(web) -> None:
    for prompt in ('Waves on a "quiet" beach', "waves at night", "a storm at sea"):
        assert post_job(web, fields={"prompt": prompt}).status_code == 201

    def found(**params) -> list[str]:
        listing = requests.get(f"{web.url}/api/jobs", params=params, timeout=10).json()
        assert listing["total"] == len(listing["jobs"])
        return sorted(j["prompt"] for j in listing["jobs"])

    assert found(q="WAVES") == ['Waves on a "quiet" beach', "waves at night"]  # case aside, as ILIKE
    assert found(q='"quiet" b') == ['Waves on a "quiet" beach']  # quotes are text, not FTS syntax
    assert found(q="at") == ["a storm at sea", "waves at night"]  # too short for trigrams: a scan
    assert found(q="aves", state="queued", model="i2vgen-xl") == ['Waves on a "quiet" beach', "waves at night"]
    assert found(q="aves", state="failed") == [] and found(q="zebra") == []


def test_search_finds_any_part_of_a_prompt_alone_or_with_filters(web):
    search_finds_any_part_of_a_prompt_alone_or_with_filters(web)


def test_search_on_postgresql_finds_the_same_from_its_trigram_index(web_factory, postgres_url):
    from sqlalchemy.engine import make_url

    admin = make_engine(postgres_url)
    database = make_url(postgres_url).database
    with admin.begin() as conn:  # three rows would be scanned anyway: make every connection prefer an index
        conn.execute(text(f'ALTER DATABASE "{database}" SET enable_seqscan = off'))
    web = web_factory(database_url=postgres_url)
    search_finds_any_part_of_a_prompt_alone_or_with_filters(web)

    def index_scans() -> int:
        with admin.connect() as conn:
            conn.execute(text("SELECT pg_stat_clear_snapshot()"))
            return conn.execute(text("SELECT idx_scan FROM pg_stat_user_indexes "
                                     "WHERE indexrelname = 'ix_jobs_prompt_trgm'")).scalar() or 0

    assert wait_for(index_scans, timeout=15, what="the web's searches to use ix_jobs_prompt_trgm (0008)")
    admin.dispose()
