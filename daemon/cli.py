"""The `i2vd` command line."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from pydantic import ValidationError

from daemon import __version__
from daemon.errors import I2vdError, InputRejected
from daemon.files import publish, temp_path, unique_stem, write_atomic
from daemon.images import is_image_name
from daemon.models import Job, JobState, utcnow
from daemon.settings import Settings, load_settings
from daemon.sidecar import PRESETS, parse_sidecar
from pipeline.errors import ModelUnavailable


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
    except (ValidationError, FileNotFoundError, ValueError) as exc:
        print(f"i2vd: invalid settings: {_one_line(exc)}", file=sys.stderr)
        return 2
    try:
        return args.func(settings, args)
    except (ModelUnavailable, I2vdError) as exc:
        print(f"i2vd: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _one_line(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
    return str(exc)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="i2vd", description="Image-to-video inbox daemon.")
    parser.add_argument("--version", action="version", version=f"i2vd {__version__}")
    parser.add_argument("--config", type=Path, help="TOML settings file (default: $I2VD_CONFIG)")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.set_defaults(func=cmd_run)

    submit = sub.add_parser("submit", help="drop an image and its sidecar into the inbox, safely")
    submit.add_argument("image", type=Path)
    submit.add_argument("--prompt", required=True)
    submit.add_argument("--name", help="file stem in the inbox (default: the image's)")
    submit.add_argument("--negative-prompt")
    submit.add_argument("--preset", choices=sorted(PRESETS))
    submit.add_argument("--resolution")
    submit.add_argument("--width", type=int)
    submit.add_argument("--height", type=int)
    submit.add_argument("--num-frames", type=int)
    submit.add_argument("--fps", type=int)
    submit.add_argument("--steps", type=int)
    submit.add_argument("--guidance-scale", type=float)
    submit.add_argument("--seed", type=int)
    submit.add_argument("--output-name")
    submit.add_argument("--priority", type=int)
    submit.set_defaults(func=cmd_submit)

    status = sub.add_parser("status", help="queue counts and the latest jobs")
    status.add_argument("--limit", type=int, default=10)
    status.set_defaults(func=cmd_status)

    jobs = sub.add_parser("jobs", help="job history").add_subparsers(required=True, metavar="ACTION")
    show = jobs.add_parser("show", help="one job with its attempts")
    show.add_argument("job_id", type=int)
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(func=cmd_jobs_show)
    listing = jobs.add_parser("list", help="recent jobs")
    listing.add_argument("--limit", type=int, default=20)
    listing.set_defaults(func=cmd_status)

    db = sub.add_parser("db", help="database schema").add_subparsers(required=True, metavar="ACTION")
    db.add_parser("upgrade", help="apply migrations up to the newest").set_defaults(func=cmd_db_upgrade)
    return parser


def cmd_run(settings: Settings, _args) -> int:
    from daemon import logs
    from daemon.service import Daemon

    logs.configure(settings.log_file, settings.log_level)
    return Daemon(settings).run()


def cmd_submit(settings: Settings, args) -> int:
    image: Path = args.image
    if not image.is_file() or not is_image_name(image.name):
        print(f"i2vd: {image} is not a .png, .jpg, .jpeg or .webp file", file=sys.stderr)
        return 2
    fields = {
        "prompt": args.prompt, "negative_prompt": args.negative_prompt, "preset": args.preset,
        "resolution": args.resolution, "width": args.width, "height": args.height,
        "num_frames": args.num_frames, "fps": args.fps, "steps": args.steps,
        "guidance_scale": args.guidance_scale, "seed": args.seed, "output_name": args.output_name,
        "priority": args.priority,
    }
    raw = json.dumps({k: v for k, v in fields.items() if v is not None}, ensure_ascii=False).encode()
    try:
        parse_sidecar(raw)  # the daemon would reject it anyway; say so now
    except InputRejected as exc:
        print(f"i2vd: {exc}", file=sys.stderr)
        return 2
    inbox = settings.inbox_dir
    inbox.mkdir(parents=True, exist_ok=True)
    suffix = image.suffix.lower()
    stem = unique_stem(inbox, args.name or image.stem, (suffix, ".json"))
    # Hidden temporary names first, renamed into place: intake never sees half a file.
    tmp = temp_path(inbox, "submit")
    shutil.copyfile(image, tmp)
    publish(tmp, inbox / f"{stem}{suffix}")
    write_atomic(inbox / f"{stem}.json", raw)
    print(f"submitted {inbox / (stem + suffix)} and {inbox / (stem + '.json')}")
    return 0


def _sessions(settings: Settings):
    from daemon.db import make_engine, schema_revision, session_factory

    engine = make_engine(settings.database_url)
    current, head = schema_revision(engine)
    if current != head:
        raise I2vdError(f"database schema is at {current or 'nothing'}, not {head}: run `i2vd db upgrade`")
    return session_factory(engine)


def _queue(settings: Settings):
    from daemon.queue import JobQueue

    return JobQueue(_sessions(settings))


def cmd_status(settings: Settings, args) -> int:
    from daemon.queue import JobQueue
    from daemon.workers import lease_note, recent_workers, worker_lines

    sessions = _sessions(settings)
    queue = JobQueue(sessions)
    counts = queue.counts()
    print("  ".join(f"{state.value}: {counts[state]}" for state in JobState))
    running, now = queue.running(), utcnow()
    for job in running:
        print(f"running #{job.id} {job.output_stem}: {progress_line(job)}, on {job.lease_owner}"
              f"{lease_note(job, now)}")
    workers = worker_lines(recent_workers(sessions, now), running, now, settings.lease_seconds)
    if workers:
        print("", *workers, sep="\n")
    jobs = queue.recent(args.limit)
    if jobs:
        print(f"\n{'ID':>5}  {'STATE':<10} {'NAME':<28} {'CREATED (UTC)':<20} RESULT")
    for job in jobs:
        result = Path(job.output_path).name if job.output_path and job.state == JobState.SUCCEEDED else (
            job.error_message or "")
        print(f"{job.id:>5}  {job.state.value:<10} {job.output_stem[:28]:<28} "
              f"{job.created_at:%Y-%m-%d %H:%M:%S}  {result[:80]}")
    return 0


def progress_line(job: Job, width: int = 30) -> str:
    """A progress bar with an ETA measured from the job's start (not its queueing)."""
    if not job.progress_total:
        return job.phase or "starting"
    step, total = job.progress_step or 0, job.progress_total
    filled = int(width * step / total)
    bar = "#" * filled + "-" * (width - filled)
    eta = ""
    if step and job.started_at:
        elapsed = (utcnow() - job.started_at).total_seconds()
        eta = f" ETA {elapsed / step * (total - step):.0f}s"
    return f"{job.phase} [{bar}] {step}/{total}{eta}"


def cmd_jobs_show(settings: Settings, args) -> int:
    job = _queue(settings).get(args.job_id)
    if job is None:
        print(f"i2vd: no job {args.job_id}", file=sys.stderr)
        return 1
    data = {c.name: getattr(job, c.name) for c in Job.__table__.columns}
    data["attempts"] = [
        {**{c.name: getattr(a, c.name) for c in a.__table__.columns if c.name != "job_id"},
         **{key: getattr(a.worker_record, key, None) for key in ("host", "pid", "gpu", "device")}}
        for a in job.attempts
    ]
    if args.json:
        print(json.dumps(data, indent=2, default=str))
        return 0
    for key, value in data.items():
        if key == "attempts":
            continue
        print(f"{key:>18}: {value.value if isinstance(value, JobState) else value}")
    for attempt in data["attempts"]:
        where = f" (GPU {attempt['gpu']})" if attempt["gpu"] else ""
        print(f"\nattempt {attempt['number']} on {attempt['worker']}{where}: {attempt['outcome'] or 'running'}")
        for key in ("started_at", "finished_at", "error_type", "error_message"):
            if attempt[key] is not None:
                print(f"{key:>18}: {attempt[key]}")
    return 0


def cmd_db_upgrade(settings: Settings, _args) -> int:
    from daemon.db import make_engine, schema_revision, upgrade

    engine = make_engine(settings.database_url)
    upgrade(engine)
    print(f"database at revision {schema_revision(engine)[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
