"""`i2vd doctor` as a person runs it: a subprocess, its words and its exit status."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

from conftest import daemon_env, make_queue, make_settings

PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2


def doctor(env: dict[str, str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "daemon.cli", "doctor"], env=env, capture_output=True,
                          text=True, timeout=120, **kwargs)


def lines_for(output: str, check: str) -> list[str]:
    return [line for line in output.splitlines() if line[6:].split(" ", 1)[0] == check]


def test_healthy_install_passes_and_explains(dirs):
    make_queue(make_settings(dirs))  # a database at head
    result = doctor(daemon_env(dirs))
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for check in ("python", "gpu", "ffmpeg", "model", "database", "inbox", "outputs", "state", "inbox-fs",
                  "disk"):
        assert lines_for(out, check) and all(line.startswith("ok") for line in lines_for(out, check)), check
    assert "with libx264" in lines_for(out, "ffmpeg")[0]
    assert "schema at head" in lines_for(out, "database")[0]
    assert "inotify" in lines_for(out, "inbox-fs")[0] or "polling" in lines_for(out, "inbox-fs")[0]
    assert out.splitlines()[-1].startswith("i2vd can run")


def _without_root_file_access() -> None:
    """Root ignores file permissions; drop that power so the test sees what any other user would."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_missing_ffmpeg_and_unwritable_outputs_block_running(dirs, tmp_path):
    dirs["outputs"].chmod(0o555)
    env = daemon_env(dirs, IMAGEIO_FFMPEG_EXE=str(tmp_path / "no-such-ffmpeg"))
    try:
        result = doctor(env, preexec_fn=_without_root_file_access if os.geteuid() == 0 else None)
    finally:
        dirs["outputs"].chmod(0o755)
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    [ffmpeg] = lines_for(out, "ffmpeg")
    assert ffmpeg.startswith("FAIL") and "no-such-ffmpeg" in ffmpeg and "does not run" in ffmpeg
    [outputs] = lines_for(out, "outputs")
    assert outputs.startswith("FAIL") and str(dirs["outputs"]) in outputs and "not writable" in outputs
    assert lines_for(out, "inbox")[0].startswith("ok")  # only what is broken is blamed
    assert out.splitlines()[-1] == "2 problem(s) keep i2vd from running: ffmpeg, outputs."
    assert "Traceback" not in result.stderr


def test_an_intake_only_daemon_needs_no_model_ffmpeg_or_gpu(dirs, tmp_path):
    make_queue(make_settings(dirs))
    env = daemon_env(dirs, I2VD_INTAKE_ONLY="true", I2VD_MODEL=str(tmp_path / "no-such-model"),
                     IMAGEIO_FFMPEG_EXE=str(tmp_path / "no-such-ffmpeg"))
    result = doctor(env)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "intake only" in lines_for(out, "role")[0]
    assert not any(lines_for(out, check) for check in ("python", "gpu", "ffmpeg", "model"))
    assert lines_for(out, "database")[0].startswith("ok")
