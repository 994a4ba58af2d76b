"""The `i2vd` command line as a person runs it: subprocesses, their words and exit status."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.daemons import daemon_env, make_queue, make_settings
from support.files import write_image
from support.jobs import queued_job, without_root_file_access

CLI = [sys.executable, "-m", "daemon.cli"]


@pytest.fixture
def folders(tmp_path) -> dict[str, Path]:
    """inbox/, outputs/ and state/ (no model: these commands never load one)."""
    d = {name: tmp_path / name for name in ("inbox", "outputs", "state")}
    for path in d.values():
        path.mkdir()
    return d


def i2vd(env: dict[str, str], *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=120, **kwargs)


def test_submit_keeps_the_pair_inside_the_inbox_and_visible(folders, tmp_path):
    env = daemon_env(folders)
    image = write_image(tmp_path / "beach.png")
    for name in ("../escape", "sub/dir", ".hidden", "~$lock", "..", "tab\there"):
        result = i2vd(env, "submit", str(image), "--prompt", "waves", "--name", name)
        assert result.returncode == 2, (name, result.stderr)
        assert result.stderr.startswith("i2vd: --name: ") and len(result.stderr.splitlines()) == 1, result.stderr
    assert not list(folders["inbox"].iterdir()) and not list(tmp_path.glob("escape*"))
    # The image's own hidden name is refused the same way, and --name fixes it.
    hidden = write_image(tmp_path / ".secret.png")
    result = i2vd(env, "submit", str(hidden), "--prompt", "waves")
    assert result.returncode == 2 and "give --name" in result.stderr
    i2vd(env, "submit", str(hidden), "--prompt", "waves", "--name", "secret", check=True)
    assert sorted(p.name for p in folders["inbox"].iterdir()) == ["secret.json", "secret.png"]


def test_submit_errors_name_the_file_or_the_flag(folders, tmp_path):
    env = daemon_env(folders)
    missing = i2vd(env, "submit", str(tmp_path / "nope.png"), "--prompt", "waves")
    assert missing.returncode == 2 and missing.stderr == f"i2vd: {tmp_path / 'nope.png'} does not exist\n"
    image = write_image(tmp_path / "beach.png")
    bad = i2vd(env, "submit", str(image), "--prompt", "waves", "--num-frames", "99", "--fps", "2")
    assert bad.returncode == 2
    assert bad.stderr.startswith("i2vd: --num-frames: ") and "; --fps: " in bad.stderr, bad.stderr
    assert "sidecar" not in bad.stderr
    assert not list(folders["inbox"].iterdir())


def test_submit_to_a_missing_inbox_is_an_error_not_a_new_folder(folders, tmp_path):
    inbox = tmp_path / "inbx"  # a typo in I2VD_INBOX_DIR
    env = daemon_env(folders, I2VD_INBOX_DIR=str(inbox))
    result = i2vd(env, "submit", str(write_image(tmp_path / "beach.png")), "--prompt", "waves")
    assert result.returncode == 2 and f"the inbox {inbox} does not exist" in result.stderr
    assert not inbox.exists()


@pytest.mark.skipif(not hasattr(os, "geteuid"), reason="POSIX permissions")
def test_submit_to_an_unwritable_inbox_says_so_in_one_line(folders, tmp_path):
    env = daemon_env(folders)
    image = write_image(tmp_path / "beach.png")
    folders["inbox"].chmod(0o555)
    try:
        result = i2vd(env, "submit", str(image), "--prompt", "waves",
                      preexec_fn=without_root_file_access if os.geteuid() == 0 else None)
    finally:
        folders["inbox"].chmod(0o755)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"i2vd: cannot write into the inbox {folders['inbox']}: Permission denied; check its permissions "
        "(and that you are in the group that shares it)"]
    assert not list(folders["inbox"].iterdir())


def test_every_option_explains_itself():
    from daemon.cli.main import _parser

    undocumented = []

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}")
            elif not isinstance(action, argparse._HelpAction) and not action.help:
                undocumented.append(f"{path} {'/'.join(action.option_strings) or action.dest}")

    walk(_parser(), "i2vd")
    assert undocumented == []


def test_read_commands_where_no_daemon_ran_create_nothing(tmp_path):
    env = daemon_env({"inbox": tmp_path / "inbox", "outputs": tmp_path / "outputs", "state": tmp_path / "state"})
    for command in (["status"], ["jobs", "list"], ["jobs", "show", "1"], ["cancel", "1"], ["retry", "1"]):
        result = i2vd(env, *command, cwd=tmp_path)
        assert result.returncode == 2, command
        assert result.stderr.startswith(f"i2vd: no database yet at {tmp_path / 'state' / 'i2vd.sqlite3'}"), command
        assert "schema" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def _finished_job(folders) -> int:
    queue = make_queue(make_settings(folders))
    job = queued_job(queue, "beach", seed=5)
    assert queue.claim("host:1", 60).id == job.id
    queue.progress(job.id, "encoding_video", owner="host:1")
    assert queue.succeed(job.id, "host:1")
    return job.id


@pytest.mark.parametrize("command", [["status"], ["jobs", "show", "1", "--json"], ["jobs", "list"]])
def test_a_reader_that_leaves_early_gets_no_traceback(folders, command):
    _finished_job(folders)
    proc = subprocess.Popen([*CLI, *command], env=daemon_env(folders), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # like `| head -1` exiting: every write now meets a closed pipe
    stderr = proc.stderr.read()
    assert proc.wait(60) == 1
    assert stderr == ""


def test_jobs_show_is_readable_and_forgets_the_last_phase(folders):
    job_id = _finished_job(folders)
    out = i2vd(daemon_env(folders), "jobs", "show", str(job_id), check=True).stdout
    assert "state: succeeded" in out
    assert "phase" not in out and "encoding_video" not in out
    assert "{" not in out  # no Python dict
    lines = out.splitlines()
    assert lines[lines.index(" " * 12 + "params:") + 1:][:2] == [' ' * 20 + 'prompt: "waves on a beach"',
                                                              ' ' * 20 + 'negative_prompt: null']
    assert ' ' * 20 + "seed: 5" in lines


def test_retry_twice_makes_one_job_and_refuses_a_model_no_longer_served(folders):
    queue = make_queue(make_settings(folders))
    job = queued_job(queue, "beach")
    assert queue.cancel(job.id).value == "cancelled"
    env = daemon_env(folders)
    first = i2vd(env, "retry", str(job.id), check=True).stdout
    again = i2vd(env, "retry", str(job.id), check=True).stdout
    assert first == f"job {job.id + 1} queued (retry of {job.id})\n" and again == first
    assert i2vd(env, "retry", str(job.id + 1)).stderr.startswith(f"i2vd: job {job.id + 1} is queued; only failed")

    # The daemons serve another model now: the retry would wait forever, so it is refused.
    gone = queued_job(queue, "lighthouse", model="i2vgen-xl")
    queue.cancel(gone.id)
    result = i2vd({**env, "I2VD_MODEL": "tiny:svd"}, "retry", str(gone.id))
    assert result.returncode == 1
    assert result.stderr == "i2vd: 'i2vgen-xl' is not served here; served models: svd (default)\n"
