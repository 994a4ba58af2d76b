"""`i2vd doctor`: check everything `i2vd run` needs and explain each finding in plain words."""

from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from daemon.settings import Settings, split_host_port
from daemon.service.units import UNIT_DIRS, installed_units, split_groups, this_executable, user_exists
from daemon.intake.watcher import choose_mode, filesystem_type, needs_polling

GIB = 1024**3
MIB = 1024**2
DISK_FAIL_BYTES = 100 * MIB  # less than this: videos (a few MB each) and their metadata may not fit
DISK_WARN_BYTES = 2 * GIB

Level = Literal["ok", "info", "warn", "fail"]


@dataclass(frozen=True)
class Finding:
    check: str
    level: Level  # fail: `i2vd run` cannot work until it is fixed
    message: str


WORKER_CHECKS = frozenset({"python", "gpu", "ffmpeg", "model"})  # what only a daemon that runs jobs needs


def run_checks(settings: Settings) -> list[Finding]:
    """Every check, in the order a person would fix things; a check that crashes is itself a finding."""
    checks: list[tuple[str, Callable[[Settings], list[Finding]]]] = [
        ("python", check_python), ("gpu", check_gpu), ("ffmpeg", check_ffmpeg), ("model", check_model),
        ("database", check_database), ("folders", check_folders), ("inbox-fs", check_inbox_filesystem),
        ("disk", check_disk), ("metrics", check_metrics), ("systemd", check_unit), ("webhooks", check_webhooks),
    ]
    findings: list[Finding] = []
    if settings.intake_only:
        checks = [(name, check) for name, check in checks if name not in WORKER_CHECKS]
        findings.append(Finding("role", "info", "intake only (I2VD_INTAKE_ONLY): this daemon runs no jobs, so "
                                "torch, the GPU, ffmpeg and the model are not checked"))
    for name, check in checks:
        try:
            findings.extend(check(settings))
        except Exception as exc:
            findings.append(Finding(name, "fail", f"the check itself failed: {type(exc).__name__}: {exc}"))
    return findings


def check_python(_settings: Settings) -> list[Finding]:
    import torch

    return [Finding("python", "ok", f"Python {platform.python_version()}, torch {torch.__version__} "
                                    f"(CUDA build: {torch.version.cuda or 'none'})")]


def check_gpu(settings: Settings) -> list[Finding]:
    import torch

    wants_cuda = settings.device.startswith("cuda")
    if not torch.cuda.is_available():
        why = ("this torch build has no CUDA support" if torch.version.cuda is None
               else "no NVIDIA GPU is visible (driver, /dev/nvidia*, CUDA_VISIBLE_DEVICES?)")
        if wants_cuda:
            return [Finding("gpu", "fail", f"I2VD_DEVICE={settings.device} but {why}.")]
        if settings.only_tiny_models:
            return [Finding("gpu", "ok", f"no GPU ({why}); fine for tiny smoke-test models.")]
        return [Finding("gpu", "warn", f"no GPU ({why}): the real model would run on the CPU, "
                                       "at hours per video.")]
    index = int(settings.device.partition(":")[2] or 0) if wants_cuda else 0
    if index >= torch.cuda.device_count():
        return [Finding("gpu", "fail", f"I2VD_DEVICE={settings.device}, but only "
                                       f"{torch.cuda.device_count()} GPU(s) are visible.")]
    name = torch.cuda.get_device_name(index)
    free, total = torch.cuda.mem_get_info(index)
    return [Finding("gpu", "ok", f"cuda:{index} {name}: {free / GIB:.1f} GiB free of {total / GIB:.1f} GiB "
                                 f"(CUDA {torch.version.cuda}).")]


def check_ffmpeg(settings: Settings) -> list[Finding]:
    import imageio_ffmpeg

    try:
        exe = imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError:
        return [Finding("ffmpeg", "fail", "no ffmpeg found: install ffmpeg (or reinstall imageio-ffmpeg, "
                                          "which ships one), or set IMAGEIO_FFMPEG_EXE to its path.")]
    try:
        version = subprocess.run([exe, "-hide_banner", "-version"], capture_output=True, text=True,
                                 timeout=30, check=True).stdout.splitlines()[0]
        encoders = subprocess.run([exe, "-hide_banner", "-encoders"], capture_output=True, text=True,
                                  timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return [Finding("ffmpeg", "fail", f"ffmpeg at {exe} does not run ({exc}): install ffmpeg, or point "
                                          "IMAGEIO_FFMPEG_EXE at a working binary.")]
    if "libx264" not in encoders:
        return [Finding("ffmpeg", "fail", f"{exe} has no libx264 encoder, which i2vd needs for H.264 MP4s.")]
    release = version.split()[2] if len(version.split()) > 2 else "unknown version"
    return [Finding("ffmpeg", "ok", f"ffmpeg {release} with libx264 at {exe}."), _check_encoder(settings)]


def _check_encoder(settings: Settings) -> Finding:
    from pipeline.errors import EncoderUnavailable
    from pipeline.video import choose_encoder

    try:
        options = choose_encoder(settings.video_encoder, preset=settings.video_preset, crf=settings.video_crf)
    except EncoderUnavailable as exc:
        return Finding("encoder", "fail", f"video_encoder={settings.video_encoder}: {exc}; set "
                                          "I2VD_VIDEO_ENCODER=auto or libx264.")
    knobs = ", ".join(f"{key} {value}" for key, value in options.to_dict().items()
                      if key not in ("encoder", "threads"))
    chosen = " (auto)" if settings.video_encoder == "auto" else ""
    return Finding("encoder", "ok", f"videos are encoded with {options.encoder}{chosen}: {knobs}.")


def check_model(settings: Settings) -> list[Finding]:
    """Each configured model: its backend detectable, its weights in a local folder or the hub cache."""
    from pipeline.backends import parse_model

    findings = []
    for name, value in settings.model_entries:
        try:
            source = parse_model(value)
        except LookupError as exc:
            findings.append(Finding("model", "fail", f"{name or value}: {exc}."))
            continue
        label = f"{name or source.backend} ({source.backend})"
        finding = _check_weights(settings, source)
        findings.append(Finding("model", finding.level, f"{label}: {finding.message}"))
    return findings


def _check_weights(settings: Settings, source) -> Finding:
    from pipeline.backends.base import looks_like_path

    model = source.source
    if source.tiny:
        return Finding("model", "ok", "tiny smoke-test model (random weights, videos are noise); built "
                                      f"offline in {settings.state_dir / 'models'} at first start.")
    if looks_like_path(model):
        path = Path(model).expanduser()
        if not (path / "model_index.json").is_file():
            return Finding("model", "fail", f"{path} is not a diffusers model folder (no model_index.json).")
        return Finding("model", "ok", f"local folder {path}, {_size(path) / GIB:.1f} GiB.")

    from huggingface_hub import constants, try_to_load_from_cache

    cached = try_to_load_from_cache(model, "model_index.json")
    if isinstance(cached, str):
        snapshot = Path(cached).parent
        return Finding("model", "ok", f"{model} is in the Hugging Face cache ({constants.HF_HUB_CACHE}), "
                                      f"{_size(snapshot) / GIB:.1f} GiB.")
    if constants.HF_HUB_OFFLINE:
        return Finding("model", "fail", f"{model} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) "
                                        "and HF_HUB_OFFLINE is set: download it, or set the model to a "
                                        "local folder.")
    from huggingface_hub import HfApi

    try:
        info = HfApi().model_info(model, files_metadata=True, timeout=15)
    except Exception as exc:
        return Finding("model", "fail", f"{model} is not in the Hugging Face cache and the hub cannot be "
                                        f"reached ({type(exc).__name__}); download it where the hub is "
                                        "reachable and set the model to that folder.")
    size = sum(s.size or 0 for s in info.siblings or [])
    return Finding("model", "warn", f"{model} is not downloaded yet; the first start fetches it from the hub "
                                    f"(the repository holds {size / GIB:.1f} GiB) into "
                                    f"{constants.HF_HUB_CACHE}.")


def check_database(settings: Settings) -> list[Finding]:
    from daemon.db.engine import make_engine, schema_revision, sqlite_path, unwritable_reason

    db_file = sqlite_path(settings.resolved_database_url)
    if db_file is not None and not db_file.exists():
        folder = _existing_parent(db_file.parent)
        if not _writable(folder):
            return [Finding("database", "fail", f"no database yet at {db_file}, and it cannot be created: "
                                                f"{folder} is not writable by user {_user()}.")]
        return [Finding("database", "ok", f"no database yet at {db_file}; created at first start.")]
    engine = make_engine(settings.resolved_database_url)
    try:
        current, head = schema_revision(engine)
        unwritable = unwritable_reason(engine) if current is not None else None
    except Exception as exc:
        return [Finding("database", "fail", f"cannot read the database ({type(exc).__name__}: "
                                            f"{str(exc).splitlines()[0][:200]}).")]
    finally:
        engine.dispose()
    if unwritable:
        return [Finding("database", "fail", f"{unwritable}.")]
    if current == head:
        return [Finding("database", "ok", f"schema at head ({head}), writable.")]
    if current is not None and not _known_revision(current):
        return [Finding("database", "fail", f"schema is at {current}, which this i2vd does not know: a newer "
                                            "version wrote it. Upgrade i2vd.")]
    return [Finding("database", "warn", f"schema at {current or 'nothing'}, head is {head}: `i2vd run` "
                                        "upgrades it at start (or run `i2vd db upgrade`).")]


def _known_revision(revision: str) -> bool:
    from alembic.script import ScriptDirectory

    from daemon.db.engine import MIGRATIONS_DIR

    return any(r.revision == revision for r in ScriptDirectory(str(MIGRATIONS_DIR)).walk_revisions())


def check_folders(settings: Settings) -> list[Finding]:
    folders = {"inbox": settings.inbox_dir, "outputs": settings.outputs_dir, "state": settings.state_dir,
               "log folder": settings.resolved_log_file.parent}
    return [_check_folder(label, path) for label, path in folders.items()]


def _check_folder(label: str, path: Path) -> Finding:
    check = label.split()[0]
    if path.exists() and not path.is_dir():
        return Finding(check, "fail", f"{label} {path} exists but is not a folder.")
    if not path.exists():
        parent = _existing_parent(path)
        if _writable(parent):
            return Finding(check, "ok", f"{label} {path} does not exist yet; created at start.")
        return Finding(check, "fail", f"{label} {path} does not exist and {parent} is not writable, so it "
                                      f"cannot be created (as user {_user()}).")
    if not _writable(path):
        return Finding(check, "fail", f"{label} {path} is not writable by user {_user()}: fix its owner or "
                                      "permissions (or the service's ReadWritePaths=).")
    return Finding(check, "ok", f"{label} {path} is writable.")


def check_inbox_filesystem(settings: Settings) -> list[Finding]:
    inbox = _existing_parent(settings.inbox_dir)
    fs = filesystem_type(inbox)
    mode = choose_mode(settings.observer, inbox)
    rescan = f"a full rescan every {settings.rescan_seconds:g} s"
    if mode == "polling":
        why = (f"{fs} is a network or FUSE filesystem, where inotify misses other machines' changes"
               if settings.observer == "auto" else "I2VD_OBSERVER=polling")
        return [Finding("inbox-fs", "ok", f"inbox on {fs}: polling every {settings.poll_interval_seconds:g} s "
                                          f"({why}), and {rescan}.")]
    if needs_polling(fs):
        return [Finding("inbox-fs", "warn", f"inbox on {fs} but I2VD_OBSERVER=inotify: files written from other "
                                            f"machines are only seen by {rescan}; use polling or auto.")]
    return [Finding("inbox-fs", "ok", f"inbox on {fs}: file events (inotify), and {rescan}.")]


def check_disk(settings: Settings) -> list[Finding]:
    usage = shutil.disk_usage(_existing_parent(settings.outputs_dir))
    text = f"{usage.free / GIB:.1f} GiB free for outputs"
    if usage.free < DISK_FAIL_BYTES:
        return [Finding("disk", "fail", f"only {usage.free / MIB:.0f} MiB free for outputs: videos will not fit.")]
    if usage.free < DISK_WARN_BYTES:
        return [Finding("disk", "warn", f"{text}: that runs out after a few hundred videos.")]
    return [Finding("disk", "ok", f"{text}.")]


def check_metrics(settings: Settings) -> list[Finding]:
    if not settings.metrics_enabled:
        return [Finding("metrics", "info", "metrics off (I2VD_METRICS_ENABLED=false).")]
    host, port = split_host_port(settings.metrics_address)
    if port == 0:
        return [Finding("metrics", "ok", f"metrics on {host}, any free port (logged in metrics_serving).")]
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    try:
        with socket.socket(family, kind, proto) as probe:
            # As the metrics server binds: a socket of an i2vd that just stopped (TIME_WAIT) is no obstacle.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        if _serves_i2vd_metrics(host, port):
            return [Finding("metrics", "info", f"{settings.metrics_address} is in use by a running i2vd (it answers "
                                               "/metrics): fine when that is the service you are checking; "
                                               "another daemon needs its own I2VD_METRICS_ADDRESS.")]
        return [Finding("metrics", "fail", f"cannot serve metrics on {settings.metrics_address} "
                                           f"({exc.strerror or exc}; another i2vd?): set I2VD_METRICS_ADDRESS to "
                                           "a free address (port 0 takes any) or I2VD_METRICS_ENABLED=false.")]
    return [Finding("metrics", "ok", f"{settings.metrics_address} is free for /metrics.")]


def _serves_i2vd_metrics(host: str, port: int) -> bool:
    """Whether what holds the port is an i2vd's metrics endpoint (README's `doctor` beside the running service)."""
    from urllib.request import urlopen

    reachable = "127.0.0.1" if host in ("", "0.0.0.0") else "::1" if host == "::" else host
    url = f"http://[{reachable}]:{port}/metrics" if ":" in reachable else f"http://{reachable}:{port}/metrics"
    try:
        with urlopen(url, timeout=3) as response:
            return b"i2vd_" in response.read(1_000_000)
    except (OSError, ValueError):
        return False


def check_unit(_settings: Settings, dirs: tuple[Path, ...] = UNIT_DIRS) -> list[Finding]:
    """Each installed unit runs this install, as a user and groups that exist (else systemd cannot start it)."""
    units = installed_units(dirs)
    if not units:
        return [Finding("systemd", "info", f"no i2vd unit in {', '.join(map(str, dirs))} (fine when run by "
                                           "hand; see `i2vd install-systemd`).")]
    findings = []
    exe = this_executable()
    for unit in units:
        missing_user = unit.user if unit.user and not user_exists(unit.user) else None
        _present, missing_groups = split_groups(unit.groups)
        if missing_user:
            findings.append(Finding("systemd", "fail", f"{unit.path} runs as user {missing_user!r}, which does not "
                                                       "exist, so systemd cannot start it (status=217/USER): "
                                                       f"create it (README.md, \"Run as a service\")."))
        if missing_groups:
            findings.append(Finding("systemd", "fail", f"{unit.path} names group(s) {' '.join(missing_groups)} that "
                                                       "do not exist, so systemd cannot start it "
                                                       "(status=216/GROUP): re-run `i2vd install-systemd`, which "
                                                       "leaves out missing groups, or create them."))
        if unit.executable and exe and Path(unit.executable) != exe:
            findings.append(Finding("systemd", "warn", f"{unit.path} runs {unit.executable}, not this install "
                                                       f"({exe}): re-run `i2vd install-systemd` to point it here."))
        elif not (missing_user or missing_groups):
            groups = " ".join(unit.groups) or "none"
            findings.append(Finding("systemd", "ok", f"{unit.path} installed, running {unit.executable} as user "
                                                     f"{unit.user or 'root'}, groups {groups}."))
    return findings


WEBHOOK_CONNECT_TIMEOUT = 3.0


def check_webhooks(settings: Settings) -> list[Finding]:
    """Each webhook URL is http(s) and its host accepts connections; a bad one only loses its events."""
    import socket
    from urllib.parse import urlsplit

    from daemon.events.webhooks import redact, url_problem

    findings = []
    for url in settings.webhook_urls:
        if (problem := url_problem(url)) is not None:
            findings.append(Finding("webhooks", "warn", f"{url!r} is skipped: {problem}. Fix webhook_urls."))
            continue
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            socket.create_connection((parts.hostname, port), timeout=WEBHOOK_CONNECT_TIMEOUT).close()
        except OSError as exc:
            findings.append(Finding("webhooks", "warn", f"{redact(url)}: cannot connect to {parts.hostname}:{port} "
                                                        f"({exc.strerror or exc}); events wait and are retried "
                                                        f"for {settings.webhook_give_up_hours:g} h."))
        else:
            findings.append(Finding("webhooks", "ok", f"{redact(url)} accepts connections."))
    if settings.webhook_urls and settings.webhook_secret is None:
        findings.append(Finding("webhooks", "warn", "webhook_secret is not set: events are sent unsigned, so "
                                                    "receivers cannot tell them from forgeries."))
    return findings


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _writable(folder: Path) -> bool:
    """Really create a file there: permissions, read-only mounts, ACLs and quotas all show up."""
    try:
        fd, name = tempfile.mkstemp(prefix=".i2vd-doctor-", dir=folder)  # hidden: intake ignores it
    except OSError:
        return False
    os.close(fd)
    os.unlink(name)
    return True


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (KeyError, ImportError):
        return str(os.geteuid())


def report(findings: list[Finding], out=sys.stdout) -> int:
    """Print the findings; 1 when any blocks running, else 0."""
    width = max(len(f.check) for f in findings)
    for f in findings:
        print(f"{f.level.upper() if f.level == 'fail' else f.level:<5} {f.check:<{width}}  {f.message}", file=out)
    blocking = sorted({f.check for f in findings if f.level == "fail"})
    if blocking:
        print(f"\n{len(blocking)} problem(s) keep i2vd from running: {', '.join(blocking)}.", file=out)
        return 1
    warnings = sum(f.level == "warn" for f in findings)
    print(f"\ni2vd can run{f' ({warnings} warning(s) above)' if warnings else ''}.", file=out)
    return 0
