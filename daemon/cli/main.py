"""The `i2vd` command line."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path, PurePath

from pydantic import ValidationError

from daemon import __version__
from daemon.errors import I2vdError, InputRejected
from daemon.files import publish, temp_path, unique_stem
from daemon.intake.images import is_image_name
from daemon.db.tables import Job, JobState
from daemon.models.catalog import ModelCatalog
from daemon.settings import Settings, describe_error, load_settings, split_host_port
from daemon.intake.sidecar import PRESETS, params_for, parse_sidecar
from daemon.jobs.errors import QueueError
from daemon.jobs.queue import RETRYABLE_STATES
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
        status = args.func(settings, args)
        sys.stdout.flush()  # here, where a closed pipe can still be handled, not at interpreter exit
        return status
    except QueueError as exc:  # the request was understood, the queue said no
        print(f"i2vd: {exc}", file=sys.stderr)
        return 1
    except (ModelUnavailable, I2vdError) as exc:
        print(f"i2vd: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `i2vd status | head -1`: the reader left. Python's documented way: point stdout at devnull so
        # the final flush cannot fail again, and exit quietly (docs.python.org, signal, "Note on SIGPIPE").
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="i2vd", description="Image-to-video inbox daemon.")
    parser.add_argument("--version", action="version", version=f"i2vd {__version__}")
    parser.add_argument("--config", type=Path, help="TOML settings file (default: $I2VD_CONFIG)")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.set_defaults(func=cmd_run)

    submit = sub.add_parser("submit", help="drop an image and its sidecar into the inbox, safely",
                            description="Validate the parameters against the model that will run them, then "
                            "write IMAGE and its sidecar into the inbox under hidden temporary names and rename "
                            "them into place. Options left out take the model's preset value (or the daemon's "
                            "default_* settings). Ranges depend on the model: see README's backends table.")
    submit.add_argument("image", type=Path, help="a .png, .jpg, .jpeg or .webp file")
    submit.add_argument("--prompt", help="what should happen in the video (required by most models)")
    submit.add_argument("--model", help="a served model's name or id (default: the first configured)")
    submit.add_argument("--name", help="file stem in the inbox, and so of the output (default: the image's); "
                        "a plain name, not hidden; -1, -2 ... is added if taken")
    submit.add_argument("--negative-prompt", help="what the video should avoid")
    submit.add_argument("--preset", choices=sorted(PRESETS), help="resolution, frames and steps in one word")
    submit.add_argument("--resolution", help="the long side in pixels (e.g. 512 or \"512p\"); or give --width and --height")
    submit.add_argument("--width", type=int, help="pixels, a multiple of the model's size step (with --height)")
    submit.add_argument("--height", type=int, help="pixels, a multiple of the model's size step (with --width)")
    submit.add_argument("--num-frames", type=int, help="frames in the video, as the model's frame rule allows")
    submit.add_argument("--fps", type=int, help="frames per second of the MP4")
    submit.add_argument("--steps", type=int, help="denoising steps: more is slower and finer")
    submit.add_argument("--guidance-scale", type=float, help="how closely to follow the prompt")
    submit.add_argument("--seed", type=int, help="random seed, for a reproducible video (default: drawn)")
    submit.add_argument("--interpolate", type=int, choices=(1, 2, 4),
                        help="synthesise in-between frames: 2 or 4 times the frames and fps")
    submit.add_argument("--output-name", help="stem of the output files (default: the inbox stem)")
    submit.add_argument("--priority", type=int, help="-10 to 10; higher runs first (default 0)")
    submit.set_defaults(func=cmd_submit)

    status = sub.add_parser("status", help="queue counts, the running job's progress, the latest jobs")
    status.add_argument("--limit", type=int, default=10, help="latest jobs shown (default: %(default)s)")
    status.add_argument("--watch", action="store_true", help="redraw every second until Ctrl-C")
    status.set_defaults(func=cmd_status)

    cancel = sub.add_parser("cancel", help="cancel a queued job, or stop a running one at its next step")
    cancel.add_argument("job_id", type=int, help="the job's ID (see `i2vd status`)")
    cancel.set_defaults(func=cmd_cancel)

    retry = sub.add_parser("retry", help="queue a failed or cancelled job again, as a new linked job")
    retry.add_argument("job_id", type=int, help="the failed or cancelled job's ID")
    retry.set_defaults(func=cmd_retry)

    jobs = sub.add_parser("jobs", help="job history").add_subparsers(required=True, metavar="ACTION")
    show = jobs.add_parser("show", help="one job with its attempts")
    show.add_argument("job_id", type=int, help="the job's ID")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(func=cmd_jobs_show)
    listing = jobs.add_parser("list", help="recent jobs with their attempts")
    listing.add_argument("--limit", type=int, default=20, help="jobs shown (default: %(default)s)")
    listing.set_defaults(func=cmd_jobs_list)

    events = sub.add_parser("events", help="the job-event stream (what webhooks receive)")
    events.add_argument("--since", type=int, metavar="ID", help="only events after this id (default: all kept; "
                        "with --follow, only new ones)")
    events.add_argument("--follow", "-f", action="store_true", help="keep printing new events until Ctrl-C")
    events.add_argument("--json", action="store_true", help="one JSON object per line, for scripts (| jq)")
    events.add_argument("--type", action="append", metavar="TYPE", help="only this type or glob (job.*); repeatable")
    events.add_argument("--job", type=int, metavar="ID", help="only this job's events")
    events.set_defaults(func=cmd_events)

    prune = sub.add_parser("prune", help="delete finished jobs and their events older than retention_days")
    prune.add_argument("--days", type=float, help="override retention_days for this run")
    prune.set_defaults(func=cmd_prune)

    db = sub.add_parser("db", help="database schema").add_subparsers(required=True, metavar="ACTION")
    db.add_parser("upgrade", help="apply migrations up to the newest").set_defaults(func=cmd_db_upgrade)

    web = sub.add_parser("web", help="serve the queue page and JSON API (default http://127.0.0.1:7860/)")
    web.add_argument("--address", help="host:port to listen on (default: the web_address setting)")
    web.set_defaults(func=cmd_web)

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
    from daemon.service.daemon import Daemon

    logs.configure(settings.log_file, settings.log_level, max_bytes=settings.log_max_bytes,
                   backup_count=settings.log_backup_count)
    return Daemon(settings, config_file=args.config).run()


def cmd_submit(settings: Settings, args) -> int:
    image: Path = args.image
    problem = _image_problem(image)
    if problem:
        print(f"i2vd: {problem}", file=sys.stderr)
        return 2
    suffix = image.suffix.lower()
    name = args.name if args.name is not None else image.stem
    if _name_problem(name, suffix):
        what = "--name" if args.name is not None else f"the image's name {name!r} (give --name)"
        print(f"i2vd: {what}: {_name_problem(name, suffix)}", file=sys.stderr)
        return 2
    fields = {
        "prompt": args.prompt, "negative_prompt": args.negative_prompt, "model": args.model,
        "preset": args.preset,
        "resolution": args.resolution, "width": args.width, "height": args.height,
        "num_frames": args.num_frames, "fps": args.fps, "steps": args.steps,
        "guidance_scale": args.guidance_scale, "seed": args.seed, "interpolate": args.interpolate,
        "output_name": args.output_name,
        "priority": args.priority,
    }
    raw = json.dumps({k: v for k, v in fields.items() if v is not None}, ensure_ascii=False).encode()
    try:
        # The daemon would reject it anyway; say so now.
        params_for(parse_sidecar(raw), PurePath(), ModelCatalog.from_settings(settings), settings)
    except InputRejected as exc:
        print(f"i2vd: {_flag_errors(exc)}", file=sys.stderr)
        return 2
    inbox = settings.inbox_dir
    if not inbox.is_dir():
        # Not created here: a typo in I2VD_INBOX_DIR would otherwise swallow the pair unseen.
        print(f"i2vd: the inbox {inbox} does not exist: check I2VD_INBOX_DIR (or --config); "
              "`i2vd run` creates it at start", file=sys.stderr)
        return 2
    stem = unique_stem(inbox, name, (suffix, ".json"))
    try:
        _write_pair(image, raw, inbox / f"{stem}{suffix}", inbox / f"{stem}.json")
    except OSError as exc:
        print(f"i2vd: cannot write into the inbox {inbox}: {exc.strerror or exc}; check its permissions "
              "(and that you are in the group that shares it)", file=sys.stderr)
        return 2
    print(f"submitted {inbox / (stem + suffix)} and {inbox / (stem + '.json')}")
    return 0


def _image_problem(image: Path) -> str | None:
    if not image.exists():
        return f"{image} does not exist"
    if not image.is_file():
        return f"{image} is not a file"
    if not is_image_name(image.name):
        return f"{image} is not a .png, .jpg, .jpeg or .webp file"
    return None


def _name_problem(stem: str, suffix: str) -> str | None:
    """Why intake would never see `stem` as a pair in the inbox itself, if it would not."""
    from daemon.intake.inbox import is_temporary_name

    if not stem or stem in (".", "..") or any(c in stem for c in "/\\") or not stem.isprintable():
        return "must be a plain file name: no '/', '\\' or control characters"
    if is_temporary_name(stem + suffix) or is_temporary_name(stem + ".json"):
        return "hidden or temporary-looking names (leading '.' or '~$', trailing '~') are ignored by the inbox"
    return None


def _flag_errors(exc: InputRejected) -> str:
    """The sidecar's field errors in the words of the flags that set them."""
    if not exc.field_errors:
        return str(exc)
    return "; ".join(f"--{e['field'].replace('_', '-')}: {e['message']}" if e["field"] in _FLAG_FIELDS
                     else e["message"] for e in exc.field_errors)


_FLAG_FIELDS = frozenset({"prompt", "negative_prompt", "preset", "resolution", "width", "height", "num_frames",
                          "fps", "steps", "guidance_scale", "seed", "output_name", "priority"})


def _write_pair(image: Path, sidecar: bytes, image_dest: Path, sidecar_dest: Path) -> None:
    """Both files under hidden temporary names first, then renamed into place image first: intake
    never sees half a file, and a failure leaves nothing behind."""
    tmp_image = tmp_sidecar = None
    published: list[Path] = []
    try:
        tmp_image = temp_path(image_dest.parent, "submit")
        shutil.copyfile(image, tmp_image)
        tmp_sidecar = temp_path(image_dest.parent, "submit")
        tmp_sidecar.write_bytes(sidecar)
        publish(tmp_image, image_dest)
        published.append(image_dest)
        publish(tmp_sidecar, sidecar_dest)
    except BaseException:
        for path in (tmp_image, tmp_sidecar, *published):
            if path is not None:
                path.unlink(missing_ok=True)
        raise


def _sessions(settings: Settings):
    from daemon.db.engine import make_engine, schema_revision, session_factory, sqlite_path

    db_file = sqlite_path(settings.resolved_database_url)
    if db_file is not None and not db_file.exists():  # reading must not leave an empty database behind
        raise I2vdError(f"no database yet at {db_file}: no daemon has run with these settings (check "
                        "I2VD_STATE_DIR or I2VD_DATABASE_URL); `i2vd run` creates it")
    engine = make_engine(settings.resolved_database_url)
    current, head = schema_revision(engine)
    if current != head:
        raise I2vdError(f"database schema is at {current or 'nothing'}, not {head}: run `i2vd db upgrade`")
    return session_factory(engine)


def _queue(settings: Settings):
    from daemon.jobs.queue import JobQueue

    return JobQueue(_sessions(settings))


def cmd_status(settings: Settings, args) -> int:
    from daemon.cli.status import status_text
    from daemon.jobs.queue import JobQueue

    sessions = _sessions(settings)
    queue = JobQueue(sessions)

    def text() -> str:
        return status_text(queue, sessions, settings, args.limit)

    if not args.watch:
        print(text())
        return 0
    try:
        while True:
            print("\033[H\033[J" + text(), flush=True)
            time.sleep(1)
    except KeyboardInterrupt:
        return 0


def cmd_jobs_list(settings: Settings, args) -> int:
    from daemon.cli.status import result

    for job in _queue(settings).recent(args.limit):
        tries = ", ".join(f"{a.number}:{a.rung}={a.outcome or 'running'}" for a in job.attempts) or "-"
        linked = f" (retry of #{job.retried_from_id})" if job.retried_from_id else ""
        print(f"#{job.id} {job.state.value:<10} {job.output_stem}{linked}  attempts [{tries}]  {result(job)}")
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
    job = _queue(settings).retry(args.job_id, ModelCatalog.from_settings(settings))
    if job.state == JobState.QUEUED:
        print(f"job {job.id} queued (retry of {args.job_id})")
    else:  # retried before: that retry is the answer, whatever became of it
        again = f"; `i2vd retry {job.id}` queues it again" if job.state in RETRYABLE_STATES else ""
        print(f"job {args.job_id} was retried as job {job.id}, now {job.state.value}{again}")
    return 0


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
    if job.state != JobState.RUNNING:  # the last phase reached is noise once the job is over
        data.update(phase=None, progress_step=None, progress_total=None)
    if args.json:
        print(json.dumps(data, indent=2, default=str))
        return 0
    for key, value in data.items():
        if key in ("attempts", "params") or value is None:
            continue
        print(f"{key:>18}: {value.value if isinstance(value, JobState) else value}")
    print(f"{'params':>18}:")
    for key, value in (data["params"] or {}).items():
        print(f"{'':>20}{key}: {json.dumps(value, ensure_ascii=False)}")
    for attempt in data["attempts"]:
        where = f" (GPU {attempt['gpu']})" if attempt["gpu"] else ""
        print(f"\nattempt {attempt['number']} on {attempt['worker']}{where}: {attempt['outcome'] or 'running'}")
        for key in ("started_at", "finished_at", "error_type", "error_message"):
            if attempt[key] is not None:
                print(f"{key:>18}: {attempt[key]}")
    return 0


def cmd_db_upgrade(settings: Settings, _args) -> int:
    from daemon.db.engine import make_engine, schema_revision, upgrade

    engine = make_engine(settings.resolved_database_url)
    upgrade(engine)
    print(f"database at revision {schema_revision(engine)[0]}")
    return 0


def cmd_web(settings: Settings, args) -> int:
    from daemon import logs
    from daemon.web.server import serve

    logs.configure(None, settings.log_level)  # console only: the daemon owns the log file
    if args.address:
        try:
            split_host_port(args.address)
        except ValueError as exc:
            raise I2vdError(f"--address: {exc}") from None
        settings = settings.model_copy(update={"web_address": args.address})
    return serve(settings)


def cmd_doctor(settings: Settings, _args) -> int:
    from daemon.service.doctor import report, run_checks

    return report(run_checks(settings))


def cmd_install_systemd(settings: Settings, args) -> int:
    from daemon.service.units import SYSTEMD_DIR, install_units

    installed = install_units(settings, args.output, inbox=args.inbox, outputs=args.outputs)
    for path in installed.paths:
        print(f"wrote {path}")
    for group in installed.missing_groups:
        print(f"left out SupplementaryGroups={group}: there is no group {group!r} on this host, and systemd would "
              f"refuse to start the service (status=216/GROUP); create the group and run this again to add it")
    print(f"""
Next, as root:
  useradd --system --user-group --home-dir /var/lib/i2vd --shell /usr/sbin/nologin i2vd
  install -D -m 0640 -g i2vd {SYSTEMD_DIR / "i2vd.env.example"} /etc/i2vd/i2vd.env   # if not there yet
  systemctl daemon-reload
  systemctl enable --now i2vd        # or one per GPU: systemctl enable --now i2vd@0 i2vd@1""")
    return 0


EVENTS_FOLLOW_INTERVAL = 0.5  # seconds between looks for new events


def cmd_events(settings: Settings, args) -> int:
    from daemon.events.kinds import EVENT_TYPES, matching_types
    from daemon.events.outbox import EventLog

    events = EventLog(_sessions(settings))
    types = set(matching_types(args.type)) if args.type else None
    if types == set():
        print(f"i2vd: no event type matches {', '.join(args.type)}; types: {', '.join(EVENT_TYPES)}", file=sys.stderr)
        return 2
    after = args.since if args.since is not None else (events.latest_id() if args.follow else 0)
    try:
        while True:
            batch = events.since(after, types=types, job_id=args.job)
            for event in batch:
                print(json.dumps(event.to_json(), ensure_ascii=False) if args.json else _event_line(event),
                      flush=args.follow)
                after = event.id
            if not args.follow:
                return 0
            if not batch:
                time.sleep(EVENTS_FOLLOW_INTERVAL)
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # `i2vd events | head`: the reader has what it wanted
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - Python flushes stdout once more at exit
        return 0


def _event_line(event) -> str:
    job = f"job {event.job_id}" if event.job_id is not None else "-"
    data = " ".join(f"{k}={v}" for k, v in event.payload.items() if v not in (None, "", {}, []) and k != "params")
    return f"{event.id:>6}  {event.created_at:%Y-%m-%d %H:%M:%S}  {event.type:<19} {job:<9} {data[:160]}"


def cmd_prune(settings: Settings, args) -> int:
    from daemon.events.retention import prune

    days = args.days if args.days is not None else settings.retention_days
    if days is None or days <= 0:
        print("i2vd: retention_days is not set; give --days N (N > 0) or set I2VD_RETENTION_DAYS", file=sys.stderr)
        return 2
    pruned = prune(_sessions(settings), days, delete_outputs=settings.retention_delete_outputs)
    files = f", {pruned.files} output file(s)" if settings.retention_delete_outputs else " (videos kept)"
    print(f"pruned {pruned.jobs} job(s) finished over {days:g} day(s) ago and {pruned.events} event(s){files}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
