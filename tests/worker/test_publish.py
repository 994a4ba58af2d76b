"""Publishing: one whole output set per job or none, names that fit, durable, shared with the group.

Unit tests run the set on real files; the rest run a real `i2vd run` with the tiny model.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import textwrap
from datetime import datetime
from pathlib import Path

import pytest

from support.daemons import daemon_env, make_queue, make_settings, wait_for

from support.files import drop_pair, probe, write_image
from daemon.files import TEMP_PREFIX, temp_path, unique_stem, write_json_atomic
from daemon.db.tables import JobState
from daemon.jobs.outputs import METADATA, VIDEO, OutputName, StagedOutputs, discard_set, finish_set
from support.tmpfs import tmpfs

WHEN = datetime(2026, 11, 22, 8, 30, 5)
ASCII_245 = "M" * 245
MULTIBYTE_245 = "日" * 81 + "ab"  # 243 + 2 bytes
assert len(MULTIBYTE_245.encode()) == 245


def name_bytes(path: Path) -> int:
    return len(os.fsencode(path.name))


def entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.is_file())


def stage(directory: Path, job_id: int = 7, stem: str = "beach", extras: tuple[str, ...] = ()) -> StagedOutputs:
    staged = StagedOutputs(job_id, OutputName(directory, "", stem, WHEN))
    staged.temp(VIDEO).write_bytes(b"video bytes")
    for suffix in extras:
        staged.temp(suffix).write_bytes(f"extra {suffix}".encode())
    return staged


# -- names ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("stem", [ASCII_245, MULTIBYTE_245, "caf\udce9" * 70], ids=["ascii", "utf8", "latin1"])
def test_long_stems_are_cut_by_whole_characters_to_fit_name_max(tmp_path, stem):
    suffixes = (VIDEO, ".webp", METADATA, ".error.json")
    first = unique_stem(tmp_path, stem, suffixes, head="i2v_", tail="_20261122_083005")
    (tmp_path / f"{first}.mp4").write_bytes(b"")
    second = unique_stem(tmp_path, stem, suffixes, head="i2v_", tail="_20261122_083005")
    assert second.endswith("_20261122_083005-1") and first.endswith("_20261122_083005")
    for base in (first, second):
        cut = base.removeprefix("i2v_").rsplit("_2026", 1)[0]
        assert cut and stem.startswith(cut)  # the stem's beginning, whole characters only
        for suffix in suffixes:
            assert len(os.fsencode(base + suffix)) <= 255
            (tmp_path / f"{base}{suffix}").touch(exist_ok=True)  # the file system agrees


def test_temporary_names_are_short_whatever_the_final_name(tmp_path):
    assert name_bytes(temp_path(tmp_path, "job123456", ".webp")) <= 40
    write_json_atomic(tmp_path / f"{ASCII_245}.json", {"ok": True})  # 250 bytes: its temp must fit too
    assert json.loads((tmp_path / f"{ASCII_245}.json").read_text()) == {"ok": True}


def test_names_the_os_gave_undecoded_survive_the_json(tmp_path):
    write_json_atomic(tmp_path / "x.error.json", {"files": ["caf\udce9.png"]})
    assert json.loads((tmp_path / "x.error.json").read_bytes()) == {"files": ["caf\udce9.png"]}


# -- the set --------------------------------------------------------------------------------------

def test_a_set_is_published_whole_with_a_manifest(tmp_path):
    with stage(tmp_path, extras=(".jpg", ".webp")) as staged:
        paths = staged.publish(lambda p: {"job_id": 7, "video": p.video.name}, lambda p: True)
    assert entries(tmp_path) == ["beach_20261122_083005" + s for s in (".jpg", ".json", ".mp4", ".webp")]
    metadata = json.loads(paths.metadata.read_text())
    assert {f["name"] for f in metadata["files"]} == {"beach_20261122_083005" + s for s in (".mp4", ".jpg", ".webp")}
    assert all(f["bytes"] == (tmp_path / f["name"]).stat().st_size for f in metadata["files"])


def test_a_lost_lease_publishes_nothing(tmp_path):
    recorded = []
    with stage(tmp_path, extras=(".jpg",)) as staged:
        assert staged.publish(lambda p: {"job_id": 7}, lambda p: recorded.append(p) or False) is None
    assert len(recorded) == 1 and entries(tmp_path) == []


def test_a_failure_before_the_metadata_is_in_place_removes_the_whole_set(tmp_path):
    foreign = tmp_path / "beach_20261122_083005.json"

    def someone_takes_the_metadata_name():
        foreign.write_text("not ours")

    with stage(tmp_path, extras=(".jpg",)) as staged, pytest.raises(FileExistsError):
        staged.publish(lambda p: {"job_id": 7, "video": p.video.name}, lambda p: True, someone_takes_the_metadata_name)
    assert entries(tmp_path) == [foreign.name] and foreign.read_text() == "not ours"


def test_another_jobs_set_taking_the_name_moves_this_one_to_the_next(tmp_path):
    recorded = []

    def record(paths):
        recorded.append(paths.video.name)
        if len(recorded) == 1:  # another daemon's job places its video under the same name right now
            paths.video.write_bytes(b"theirs")
        return True

    with stage(tmp_path) as staged:
        paths = staged.publish(lambda p: {"job_id": 7, "video": p.video.name}, record)
    assert recorded == ["beach_20261122_083005.mp4", "beach_20261122_083005-1.mp4"]
    assert paths.video.read_bytes() == b"video bytes"
    assert json.loads(paths.metadata.read_text())["video"] == paths.video.name
    assert entries(tmp_path) == ["beach_20261122_083005-1.json", "beach_20261122_083005-1.mp4",
                                 "beach_20261122_083005.mp4"]


CRASH_BETWEEN_RENAMES = textwrap.dedent("""
    import os, sys
    from datetime import datetime
    from pathlib import Path
    from daemon.jobs.outputs import VIDEO, OutputName, StagedOutputs
    directory = Path(sys.argv[1])
    staged = StagedOutputs(7, OutputName(directory, "", "beach", datetime(2026, 11, 22, 8, 30, 5)))
    staged.temp(VIDEO).write_bytes(b"video bytes")
    staged.temp(".jpg").write_bytes(b"poster")
    paths = staged.publish(lambda p: {"job_id": 7, "video": p.video.name},
                           lambda p: print(p.video, p.metadata, flush=True) or True,
                           lambda: os._exit(9))
""")


def crash_between_renames(directory: Path):
    """A real process that dies after placing the video and extras, before the metadata."""
    from daemon.jobs.outputs import OutputPaths

    result = subprocess.run([sys.executable, "-c", CRASH_BETWEEN_RENAMES, str(directory)],
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert result.returncode == 9, result.stderr
    return OutputPaths(*map(Path, result.stdout.split()))


def test_a_set_left_between_renames_is_finished(tmp_path):
    paths = crash_between_renames(tmp_path)
    assert not paths.metadata.exists() and paths.video.exists() and paths.path(".jpg").exists()
    assert finish_set(7, paths)
    assert json.loads(paths.metadata.read_text())["job_id"] == 7
    assert entries(tmp_path) == ["beach_20261122_083005" + s for s in (".jpg", ".json", ".mp4")]
    assert finish_set(7, paths) and not finish_set(8, paths)  # idempotent; another job's it is not
    assert discard_set(7, paths) == [] and len(entries(tmp_path)) == 3  # a complete set stays


def test_a_set_left_without_its_staged_metadata_is_removed(tmp_path):
    paths = crash_between_renames(tmp_path)
    for staged in tmp_path.glob(f"{TEMP_PREFIX}*{METADATA}"):
        staged.unlink()  # as an older i2vd left it: a video and no metadata anywhere
    assert not finish_set(7, paths)
    discard_set(7, paths)
    assert entries(tmp_path) == []


def test_a_set_whose_extra_went_missing_is_removed(tmp_path):
    paths = crash_between_renames(tmp_path)
    paths.path(".jpg").unlink()
    assert not finish_set(7, paths)
    discard_set(7, paths)
    assert entries(tmp_path) == []


def test_a_name_held_by_another_jobs_set_is_never_removed(tmp_path):
    paths = crash_between_renames(tmp_path)
    finish_set(7, paths)
    assert not finish_set(8, paths)  # job 8 recorded these names, then lost the race for them
    assert discard_set(8, paths) == [] and len(entries(tmp_path)) == 3


# -- permissions ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("umask", "mode"), [(0o002, 0o664), (0o022, 0o644)])
def test_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write_json_atomic(tmp_path / "failed" / "x.error.json", {"code": "x"})
        with stage(tmp_path, extras=(".jpg",)) as staged:
            staged.publish(lambda p: {"job_id": 7}, lambda p: True)
    finally:
        os.umask(old)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) == 4
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in files} == {p.name: mode for p in files}


def test_submit_writes_with_the_users_umask(tmp_path):
    dirs = {name: tmp_path / name for name in ("inbox", "outputs", "state")}
    dirs["inbox"].mkdir()  # submit writes into an existing inbox only
    image = write_image(tmp_path / "beach.png")
    result = subprocess.run([sys.executable, "-m", "daemon.cli", "submit", str(image), "--prompt", "waves"],
                            env=daemon_env(dirs), capture_output=True, text=True, preexec_fn=lambda: os.umask(0o002))
    assert result.returncode == 0, result.stderr
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in dirs["inbox"].iterdir()}
    assert modes == {"beach.png": 0o664, "beach.json": 0o664}  # the daemon (another user) can read them


# -- a real daemon --------------------------------------------------------------------------------

def visible(directory: Path, pattern: str) -> list[Path]:
    return sorted(p for p in directory.glob(pattern) if not p.name.startswith("."))


def pairs_of(outputs: Path) -> tuple[list[Path], list[Path]]:
    return visible(outputs, "*.mp4"), visible(outputs, "*.json")


def test_long_names_give_exactly_one_video_and_metadata_each(dirs, run_daemon):
    inbox, outputs = dirs["inbox"], dirs["outputs"]
    stems = ["M" * 220, ASCII_245, MULTIBYTE_245]
    for n, stem in enumerate(stems):
        drop_pair(inbox, stem, seed=n)
    rejected = "R" * 245
    write_image(inbox / f"{rejected}.png")
    (inbox / f"{rejected}.json").write_text('{"prompt": "unterminated')
    daemon = run_daemon(daemon_env(dirs))
    daemon.wait_ready()
    queue = make_queue(make_settings(dirs))
    wait_for(lambda: len(queue.recent()) == 3 and all(j.state in (JobState.SUCCEEDED, JobState.FAILED)
                                                      for j in queue.recent()), what="three jobs finished")
    error = wait_for(lambda: next(iter(visible(inbox / "failed", "*.error.json")), None), what="error sidecar")
    assert daemon.stop() == 0

    assert {j.state for j in queue.recent()} == {JobState.SUCCEEDED}
    videos, metadata = pairs_of(outputs)
    assert len(videos) == 3 and len(metadata) == 3
    assert not list(outputs.glob(f"{TEMP_PREFIX}*"))
    for job in queue.recent():
        video = Path(job.output_path)
        assert name_bytes(video) <= 255 and re.search(r"_\d{8}_\d{6}\.mp4$", video.name)
        assert job.output_stem.startswith(video.name[:20])
        document = json.loads(Path(job.metadata_path).read_text())
        assert document["video"] == video.name and document["inputs"]["name"] == job.output_stem
        assert document["inputs"]["image"] == f"{job.output_stem}.png"  # the full input name
        assert probe(video)[0] == 8
    assert sorted(j.output_stem for j in queue.recent()) == sorted(stems)

    report = json.loads(error.read_text())
    assert name_bytes(error) <= 255 and report["code"] == "invalid_json"
    assert sorted(report["files"]) == [f"{rejected}.json", f"{rejected}.png"]  # the full input names
    moved = error.name.removesuffix(".error.json")
    assert entries(inbox / "failed") == sorted([error.name, f"{moved}.json", f"{moved}.png"])


@pytest.fixture
def small_outputs(dirs):
    """outputs/ on a 256 KiB tmpfs, unmounted afterwards; skips where this machine cannot mount."""
    with tmpfs(dirs["outputs"], "256k", "mode=0755"):
        yield dirs["outputs"]


def test_a_full_disk_while_writing_metadata_then_freed_gives_one_pair(dirs, small_outputs, run_daemon):
    outputs = small_outputs
    # The video (~8 KB) fits in what is left, its metadata (the prompt twice, ~25 KB) does not.
    filler = outputs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:  # full
        os.ftruncate(fd, os.fstat(fd).st_size - 16 * 1024)
    finally:
        os.close(fd)
    drop_pair(dirs["inbox"], "beach", prompt="日" * 3990, seed=1)
    daemon = run_daemon(daemon_env(dirs, I2VD_RETRY_BACKOFF_SECONDS="0.5", I2VD_MAX_RETRIES="3"))
    daemon.wait_ready()
    wait_for(lambda: "job_retry_scheduled" in daemon.output, what="a failed publish")
    assert entries(outputs) == ["filler"]  # nothing half-published
    filler.unlink()
    queue = make_queue(make_settings(dirs))
    job = wait_for(lambda: (j := queue.recent(1)) and j[0].state == JobState.SUCCEEDED and j[0], what="success")
    assert daemon.stop() == 0

    videos, metadata = pairs_of(outputs)
    assert [v.name for v in videos] == [Path(job.output_path).name]
    assert [m.name for m in metadata] == [Path(job.metadata_path).name]
    assert not re.search(r"-\d+\.mp4$", videos[0].name)
    assert json.loads(metadata[0].read_text())["job_id"] == job.id and probe(videos[0])[0] == 8
    assert [a.outcome for a in job.attempts] == ["failed", "succeeded"]
    assert "No space left" in job.attempts[0].error_message


@pytest.mark.parametrize("staged_metadata", ["kept", "lost"])
def test_a_crash_between_the_video_and_its_metadata_ends_in_one_set(dirs, run_daemon, staged_metadata):
    outputs = dirs["outputs"]
    drop_pair(dirs["inbox"], "beach", prompt="a beach CRASH-PUBLISH", seed=1)
    crashing = run_daemon(daemon_env(dirs, I2VD_FAULT_CRASH_PUBLISH="CRASH-PUBLISH"))
    crashing.wait_ready()
    assert crashing.proc.wait(240) == -9
    video = visible(outputs, "*.mp4")[0]
    staged = list(outputs.glob(f"{TEMP_PREFIX}*{METADATA}"))
    assert not visible(outputs, "*.json") and len(staged) == 1
    if staged_metadata == "lost":  # as a crash under an older i2vd left it
        staged[0].unlink()

    daemon = run_daemon(daemon_env(dirs))
    daemon.wait_ready()
    queue = make_queue(make_settings(dirs))
    job = wait_for(lambda: (j := queue.recent(1)) and j[0].state == JobState.SUCCEEDED and j[0], what="success")
    assert daemon.stop() == 0

    videos, metadata = pairs_of(outputs)
    assert len(videos) == 1 and len(metadata) == 1 and not list(outputs.glob(f"{TEMP_PREFIX}*"))
    assert str(videos[0]) == job.output_path and str(metadata[0]) == job.metadata_path
    document = json.loads(metadata[0].read_text())
    assert document["job_id"] == job.id and "recovered" not in document  # the real metadata, not a stub
    assert document["timings"]["generation_seconds"] > 0 and probe(videos[0])[0] == 8
    if staged_metadata == "kept":  # finished as the crashed attempt made it: not generated again
        assert videos[0] == video and [a.outcome for a in job.attempts] == ["crashed"]
    else:  # the half set was removed and the job ran again
        assert [a.outcome for a in job.attempts] == ["crashed", "succeeded"]
        assert "output_discarded" in (dirs["state"] / "i2vd.log").read_text()
