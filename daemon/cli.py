"""The `i2vd` command line."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path, PurePath

from pydantic import ValidationError

from daemon import __version__
from daemon.errors import I2vdError, InputRejected
from daemon.files import publish, temp_path, unique_stem, write_atomic
from daemon.images import is_image_name
from daemon.models import Job, JobState, utcnow
from daemon.settings import Settings, describe_error, load_settings
from daemon.catalog import ModelCatalog
from daemon.sidecar import PRESETS, params_for, parse_sidecar
from pipeline.errors import ModelUnavailable


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
    except (ValidationError, FileNotFoundError, ValueError) as exc:
        print(f"i2vd: invalid settings: {describe_error(exc)}", file=sys.stderr)
        return 2
    try:
        return args.func(settings, args)
    except (ModelUnavailable, I2vdError) as exc:
        print(f"i2vd: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="i2vd", description="Image-to-video inbox daemon.")
    parser.add_argument("--version", action="version", version=f"i2vd {__version__}")
    parser.add_argument("--config", type=Path, help="TOML settings file (default: $I2VD_CONFIG)")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.set_defaults(func=cmd_run)

    submit = sub.add_parser("submit", help="drop an image and its sidecar into the inbox, safely")
    submit.add_argument("image", type=Path)
    submit.add_argument("--prompt", help="required by most models (see README's backends table)")
    submit.add_argument("--model", help="a served model's name or id (default: the first configured)")
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

    status = sub.add_parser("status", help="queue counts, the running job's progress, the latest jobs")
    status.add_argument("--limit", type=int, default=10)
    status.add_argument("--watch", action="store_true", help="redraw every second until Ctrl-C")
    status.set_defaults(func=cmd_status)

    cancel = sub.add_parser("cancel", help="cancel a queued job, or stop a running one at its next step")
    cancel.add_argument("job_id", type=int)
    cancel.set_defaults(func=cmd_cancel)

    retry = sub.add_parser("retry", help="queue a failed or cancelled job again, as a new linked job")
    retry.add_argument("job_id", type=int)
    retry.set_defaults(func=cmd_retry)

    jobs = sub.add_parser("jobs", help="job history").add_subparsers(required=True, metavar="ACTION")
    show = jobs.add_parser("show", help="one job with its attempts")
    show.add_argument("job_id", type=int)
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(func=cmd_jobs_show)
    listing = jobs.add_parser("list", help="recent jobs with their attempts")
    listing.add_argument("--limit", type=int, default=20)
    listing.set_defaults(func=cmd_jobs_list)

    db = sub.add_parser("db", help="database schema").add_subparsers(required=True, metavar="ACTION")
    db.add_parser("upgrade", help="apply migrations up to the newest").set_defaults(func=cmd_db_upgrade)

    doctor = sub.add_parser("doctor", help="check what `i2vd run` needs; exit 1 when something blocks it")
    doctor.set_defaults(func=cmd_doctor)

    units = sub.add_parser("install-systemd", help="write the systemd units with this install's paths")
    units.add_argument("--output", type=Path, default=Path("/etc/systemd/system"),
                       help="folder for i2vd.service and i2vd@.service (default: %(default)s)")
    units.add_argument("--inbox", type=Path, help="inbox folder (default: the inbox_dir setting)")
    units.add_argument("--outputs", type=Path, help="outputs folder (default: the outputs_dir setting)")
    units.set_defaults(func=cmd_install_systemd)
    return parser


def cmd_run(settings: Settings, args) -> int:
    from daemon import logs
    from daemon.service import Daemon

    logs.configure(settings.log_file, settings.log_level, max_bytes=settings.log_max_bytes,
                   backup_count=settings.log_backup_count)
    return Daemon(settings, config_file=args.config).run()


def cmd_submit(settings: Settings, args) -> int:
    image: Path = args.image
    if not image.is_file() or not is_image_name(image.name):
        print(f"i2vd: {image} is not a .png, .jpg, .jpeg or .webp file", file=sys.stderr)
        return 2
    fields = {
        "prompt": args.prompt, "negative_prompt": args.negative_prompt, "model": args.model,
        "preset": args.preset,
        "resolution": args.resolution, "width": args.width, "height": args.height,
        "num_frames": args.num_frames, "fps": args.fps, "steps": args.steps,
        "guidance_scale": args.guidance_scale, "seed": args.seed, "output_name": args.output_name,
        "priority": args.priority,
    }
    raw = json.dumps({k: v for k, v in fields.items() if v is not None}, ensure_ascii=False).encode()
    try:
        # The daemon would reject it anyway; say so now.
        params_for(parse_sidecar(raw), PurePath(), ModelCatalog.from_settings(settings), settings)
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

    sessions = _sessions(settings)
    queue = JobQueue(sessions)
    if not args.watch:
        print(_status_text(queue, sessions, args.limit, settings.lease_seconds))
        return 0
    try:
        while True:
            print("\033[H\033[J" + _status_text(queue, sessions, args.limit, settings.lease_seconds), flush=True)
            time.sleep(1)
    except KeyboardInterrupt:
        return 0


def _status_text(queue, sessions, limit: int, lease_seconds: float) -> str:
    from daemon.workers import lease_note, recent_workers, unserved_lines, worker_lines

    counts = queue.counts()
    lines = ["  ".join(f"{state.value}: {counts[state]}" for state in JobState)]
    running, now = queue.running(), utcnow()
    for job in running:
        lines.append(f"running #{job.id} {job.output_stem}: {progress_line(job)}, on {job.lease_owner}"
                     f"{lease_note(job, now)}")
    known = recent_workers(sessions, now)
    lines += unserved_lines(queue.queued_by_model(), known, now, lease_seconds)
    workers = worker_lines(known, running, now, lease_seconds)
    if workers:
        lines += ["", *workers]
    jobs = queue.recent(limit)
    if jobs:
        lines.append(f"\n{'ID':>5}  {'STATE':<10} {'NAME':<28} {'CREATED (UTC)':<20} RESULT")
    for job in jobs:
        lines.append(f"{job.id:>5}  {job.state.value:<10} {job.output_stem[:28]:<28} "
                     f"{job.created_at:%Y-%m-%d %H:%M:%S}  {_result(job)[:80]}")
    return "\n".join(lines)


def _result(job: Job) -> str:
    if job.state == JobState.SUCCEEDED and job.output_path:
        return Path(job.output_path).name
    if job.run_after and job.state == JobState.QUEUED:
        return f"retry after {job.run_after:%H:%M:%S}"
    return job.error_message or ""


def cmd_jobs_list(settings: Settings, args) -> int:
    for job in _queue(settings).recent(args.limit):
        tries = ", ".join(f"{a.number}:{a.rung}={a.outcome or 'running'}" for a in job.attempts) or "-"
        linked = f" (retry of #{job.retried_from_id})" if job.retried_from_id else ""
        print(f"#{job.id} {job.state.value:<10} {job.output_stem}{linked}  attempts [{tries}]  {_result(job)}")
    return 0


def cmd_cancel(settings: Settings, args) -> int:
    state = _queue(settings).cancel(args.job_id)
    if state is None:
        print(f"i2vd: no job {args.job_id}", file=sys.stderr)
        return 1
    if state == JobState.CANCELLED:
        print(f"job {args.job_id} cancelled")
    elif state == JobState.RUNNING:
        print(f"job {args.job_id} is running: it stops at its next denoising step")
    else:
        print(f"i2vd: job {args.job_id} is {state.value}; nothing to cancel", file=sys.stderr)
        return 1
    return 0


def cmd_retry(settings: Settings, args) -> int:
    try:
        job = _queue(settings).retry(args.job_id)
    except (LookupError, ValueError) as exc:
        print(f"i2vd: {exc}", file=sys.stderr)
        return 1
    print(f"job {job.id} queued (retry of {args.job_id})")
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


def cmd_doctor(settings: Settings, _args) -> int:
    from daemon.doctor import report, run_checks

    return report(run_checks(settings))


def cmd_install_systemd(settings: Settings, args) -> int:
    from daemon.units import SYSTEMD_DIR, install_units

    for path in install_units(settings, args.output, inbox=args.inbox, outputs=args.outputs):
        print(f"wrote {path}")
    print(f"""
Next, as root:
  useradd --system --user-group --home-dir /var/lib/i2vd --shell /usr/sbin/nologin i2vd
  install -D -m 0640 -g i2vd {SYSTEMD_DIR / "i2vd.env.example"} /etc/i2vd/i2vd.env   # if not there yet
  systemctl daemon-reload
  systemctl enable --now i2vd        # or one per GPU: systemctl enable --now i2vd@0 i2vd@1""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
