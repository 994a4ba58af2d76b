"""Intake on real folders: readiness, pairing, presets by folder, bad input, ignored names."""

from __future__ import annotations

import json
import os
import time

import PIL.Image

from support.files import write_image, write_sidecar
from daemon.db.tables import JobState
from support.intake_harness import IntakeHarness, harness  # noqa: F401 (fixture)


def test_slow_writer_is_not_taken_early(harness):
    h = harness(settle_seconds=0.4)
    write_sidecar(h.inbox / "slow.json")
    data = (write_image(h.inbox.parent / "src.png", size=(64, 64))).read_bytes()
    with open(h.inbox / "slow.png", "wb") as fh:
        for i in range(6):  # six chunks, 0.25 s apart: 1.5 s, several settle windows
            fh.write(data[i * len(data) // 6:(i + 1) * len(data) // 6])
            fh.flush()
            h.pump(0.25)
            assert h.jobs() == [], "taken while still being written"
    h.pump_until(lambda: h.jobs(JobState.QUEUED))
    assert not h.failed_codes()
    assert (h.settings.done_dir / "slow.png").read_bytes() == data


def test_sidecar_after_image_and_image_after_sidecar(harness):
    h = harness()
    write_image(h.inbox / "first-image.png")
    write_sidecar(h.inbox / "first-sidecar.json")
    h.pump(1.0)
    assert h.jobs() == []
    write_sidecar(h.inbox / "first-image.json")
    write_image(h.inbox / "first-sidecar.webp", fmt="WEBP")
    h.pump_until(lambda: len(h.jobs(JobState.QUEUED)) == 2)
    assert sorted(os.listdir(h.settings.done_dir)) == [
        "first-image.json", "first-image.png", "first-sidecar.json", "first-sidecar.webp"]


def test_rsync_style_temp_then_rename_and_moved_in_from_outside(harness, tmp_path):
    h = harness()
    write_image(h.inbox / ".beach.png.Xa81Qz", fmt="PNG")
    write_sidecar(h.inbox / "beach.json.tmp")
    h.pump(1.0)
    assert h.jobs() == [] and not h.failed_codes()
    os.rename(h.inbox / ".beach.png.Xa81Qz", h.inbox / "beach.png")
    os.rename(h.inbox / "beach.json.tmp", h.inbox / "beach.json")
    outside = tmp_path / "elsewhere"
    write_image(outside / "moved.jpg", fmt="JPEG")
    write_sidecar(outside / "moved.json")
    os.rename(outside / "moved.jpg", h.inbox / "moved.jpg")
    os.rename(outside / "moved.json", h.inbox / "moved.json")
    jobs = h.pump_until(lambda: (j := h.jobs(JobState.QUEUED)) and len(j) == 2 and j)
    assert sorted(j.output_stem for j in jobs) == ["beach", "moved"]


def test_polling_mode_takes_files_present_at_start_and_later(harness, dirs):
    write_image(dirs["inbox"] / "before.png")
    write_sidecar(dirs["inbox"] / "before.json")
    h = harness(observer="polling", poll_interval_seconds=0.2, rescan_seconds=3600)
    h.pump_until(lambda: h.jobs(JobState.QUEUED))
    write_image(h.inbox / "sub" / "later.png")
    write_sidecar(h.inbox / "sub" / "later.json")
    h.pump_until(lambda: len(h.jobs(JobState.QUEUED)) == 2)


def test_rescan_finds_what_events_missed(harness, dirs):
    h = harness(observer="polling", poll_interval_seconds=3600, rescan_seconds=3600)
    write_image(h.inbox / "missed.png")
    write_sidecar(h.inbox / "missed.json")
    h.pump(1.0)
    assert h.jobs() == []  # no event came (the observer polls once an hour)
    h.intake.scan()
    h.pump_until(lambda: h.jobs(JobState.QUEUED))


def test_subfolder_preset_and_mirroring(harness):
    h = harness(model="i2vgen-xl")  # its real presets (a tiny model's are all 32x32); intake loads no model
    write_image(h.inbox / "preview" / "project a" / "shot.png")
    (h.inbox / "preview" / "project a" / "shot.json").write_text(json.dumps({"prompt": "p"}))
    write_image(h.inbox / "clients" / "acme" / "logo.png")
    (h.inbox / "clients" / "acme" / "logo.json").write_text(json.dumps({"prompt": "p", "preset": "high"}))
    write_image(h.inbox / "max" / "override.png")
    (h.inbox / "max" / "override.json").write_text(json.dumps({"prompt": "p", "preset": "preview"}))
    jobs = h.pump_until(lambda: (j := h.jobs(JobState.QUEUED)) and len(j) == 3 and j)
    by_stem = {j.output_stem: j for j in jobs}
    assert by_stem["shot"].params["num_frames"] == 8 and by_stem["shot"].params["steps"] == 30
    assert by_stem["shot"].output_subdir == "preview/project a"
    assert by_stem["logo"].params["width"] == 768 and by_stem["logo"].output_subdir == "clients/acme"
    assert by_stem["override"].params["num_frames"] == 8
    assert (h.settings.done_dir / "preview" / "project a" / "shot.png").exists()


def test_lone_halves_fail_after_pair_timeout(harness):
    h = harness(pair_timeout_seconds=0.8)
    write_image(h.inbox / "alone.png")
    write_sidecar(h.inbox / "orphan.json")
    h.pump_until(lambda: len(h.failed_codes()) == 2)
    assert h.failed_codes() == {"alone": "missing_sidecar", "orphan": "missing_image"}
    assert (h.settings.failed_dir / "alone.png").exists() and (h.settings.failed_dir / "orphan.json").exists()
    assert h.jobs() == []


def test_default_prompt_for_image_without_sidecar(harness):
    h = harness(pair_timeout_seconds=0.5, default_prompt="gentle camera pan")
    write_image(h.inbox / "nosidecar.png")
    job = h.pump_until(lambda: h.jobs(JobState.QUEUED))[0]
    assert job.params["prompt"] == "gentle camera pan" and job.sidecar_path is None


def test_ignored_names_and_folders(harness, dirs):
    h = harness(outputs_dir=dirs["inbox"] / "renders")
    for name in (".hidden.png", "x.part", "y.png.partial", "z.png.crdownload", "~$doc.png",
                 ".~lock.a.png#", "w.png.tmp"):
        write_image(h.inbox / name, fmt="PNG")
    write_image(h.inbox / "done" / "old.png")
    write_sidecar(h.inbox / "done" / "old.json")
    write_image(h.inbox / "renders" / "r.png")
    write_sidecar(h.inbox / "renders" / "r.json")
    h.pump(1.5)
    assert h.jobs() == [] and h.failed_codes() == {}
    assert (h.inbox / "x.part").exists() and (h.inbox / "renders" / "r.png").exists()


def test_names_with_spaces_and_non_ascii_are_accepted(harness):
    h = harness()
    write_image(h.inbox / "Été à la plage 2.PNG", fmt="PNG")
    write_sidecar(h.inbox / "Été à la plage 2.json")
    write_image(h.inbox / "写真.JPEG", fmt="JPEG")
    write_sidecar(h.inbox / "写真.json")
    jobs = h.pump_until(lambda: (j := h.jobs(JobState.QUEUED)) and len(j) == 2 and j)
    assert sorted(j.output_stem for j in jobs) == sorted(["Été à la plage 2", "写真"])


def test_same_name_again_is_a_new_job_and_done_names_stay_unique(harness):
    h = harness()
    for _ in range(2):
        write_image(h.inbox / "again.png")
        write_sidecar(h.inbox / "again.json")
        h.pump_until(lambda: not (h.inbox / "again.png").exists())
    assert len(h.jobs(JobState.QUEUED)) == 2
    assert sorted(os.listdir(h.settings.done_dir)) == ["again-1.json", "again-1.png", "again.json", "again.png"]


def _bomb(path):
    PIL.Image.new("1", (12_000, 12_000)).save(path)  # 144 Mpx of zeros, a few kB on disk


def _truncated(path):
    write_image(path, size=(200, 200), color=(1, 2, 3))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _cmyk_ok(path):
    PIL.Image.new("CMYK", (40, 40), (0, 50, 100, 0)).save(path, format="JPEG")


BAD_IMAGES = {
    "zero": (lambda p: p.write_bytes(b""), "empty_file"),
    "truncated": (_truncated, "image_unreadable"),
    "text": (lambda p: p.write_text("hello, I am text"), "not_an_image"),
    "directory": (lambda p: p.mkdir(), "not_a_file"),
    "bomb": (_bomb, "image_too_many_pixels"),
    "toobig": (lambda p: write_image(p, size=(300, 300)).write_bytes(os.urandom(300_000)), "image_too_large"),
    "gif": (lambda p: PIL.Image.new("RGB", (8, 8)).save(p, format="GIF"), "not_an_image"),
}

BAD_SIDECARS = {
    "badjson": (b'{"prompt": ', "invalid_json"),
    "nonobject": (b'["prompt"]', "sidecar_not_object"),
    "huge": (json.dumps({"prompt": "x" * 70_000}).encode(), "sidecar_too_large"),
    "unknown": (json.dumps({"prompt": "x", "color": 1}).encode(), "invalid_sidecar"),
    "wrongtype": (json.dumps({"prompt": "x", "steps": "many"}).encode(), "invalid_sidecar"),
    "range": (json.dumps({"prompt": "x", "num_frames": 64}).encode(), "invalid_sidecar"),
    "emptyprompt": (json.dumps({"prompt": ""}).encode(), "invalid_sidecar"),
    "slash": (json.dumps({"prompt": "x", "output_name": "a/b"}).encode(), "invalid_sidecar"),
    "dotdot": (json.dumps({"prompt": "x", "output_name": ".."}).encode(), "invalid_sidecar"),
    "nul": (json.dumps({"prompt": "x", "output_name": "a\u0000b"}).encode(), "invalid_sidecar"),
    "leadingdot": (json.dumps({"prompt": "x", "output_name": ".bashrc"}).encode(), "invalid_sidecar"),
}


def test_every_bad_input_lands_in_failed_with_its_code(harness, tmp_path):
    # The empty image is judged only once pair_timeout has passed (it might still be arriving).
    h = harness(max_image_bytes=200_000, max_image_pixels=50_000_000, pair_timeout_seconds=2)
    for name, (make, _) in BAD_IMAGES.items():
        make(h.inbox / f"{name}.png")
        write_sidecar(h.inbox / f"{name}.json")
    for name, (raw, _) in BAD_SIDECARS.items():
        write_image(h.inbox / f"{name}.png")
        (h.inbox / f"{name}.json").write_bytes(raw)
    write_image(h.inbox / "fifo.png")
    os.mkfifo(h.inbox / "fifo.json")  # reading it would block the daemon forever
    target = write_image(tmp_path / "real.png")
    os.symlink(target, h.inbox / "link.png")
    write_sidecar(h.inbox / "link.json")
    # good ones among them: BOM sidecar, CMYK JPEG, 16-bit PNG with alpha-free grey
    write_image(h.inbox / "bom.png")
    (h.inbox / "bom.json").write_bytes(b"\xef\xbb\xbf" + json.dumps({"prompt": "with bom"}).encode())
    _cmyk_ok(h.inbox / "cmyk.jpg")
    write_sidecar(h.inbox / "cmyk.json")

    expected = {name: code for name, (_, code) in {**BAD_IMAGES, **BAD_SIDECARS}.items()} | {
        "link": "symlink", "fifo": "not_a_file"}
    h.pump_until(lambda: len(h.failed_codes()) == len(expected) and len(h.jobs(JobState.QUEUED)) == 2,
                 timeout=20)
    assert h.failed_codes() == expected
    assert sorted(j.output_stem for j in h.jobs(JobState.QUEUED)) == ["bom", "cmyk"]
    for name in expected:  # both halves kept, nothing deleted, reason readable
        report = json.loads((h.settings.failed_dir / f"{name}.error.json").read_text())
        assert report["error"] and report["hint"] is not None and report["time"]
        assert len(report["files"]) == 2
        for filename in report["files"]:
            assert os.path.lexists(h.settings.failed_dir / filename)
    assert target.exists()  # the link was moved, its target untouched
    assert set(os.listdir(h.inbox)) == {"done", "failed"}
    unknown = json.loads((h.settings.failed_dir / "unknown.error.json").read_text())
    assert unknown["field_errors"] == [{"field": "color", "message": "unknown field"}]


def test_failed_names_never_overwrite(harness):
    h = harness()
    for _ in range(2):
        (h.inbox / "dup.png").write_text("not an image")
        write_sidecar(h.inbox / "dup.json")
        h.pump_until(lambda: not (h.inbox / "dup.png").exists())
    assert sorted(os.listdir(h.settings.failed_dir)) == [
        "dup-1.error.json", "dup-1.json", "dup-1.png", "dup.error.json", "dup.json", "dup.png"]


def test_ambiguous_pair(harness):
    h = harness()
    write_image(h.inbox / "two.png")
    write_image(h.inbox / "two.jpg", fmt="JPEG")
    write_sidecar(h.inbox / "two.json")
    h.pump_until(lambda: h.failed_codes())
    assert h.failed_codes() == {"two": "ambiguous_pair"}
    assert sorted(os.listdir(h.settings.failed_dir)) == ["two.error.json", "two.jpg", "two.json", "two.png"]


def test_filesystem_type_decides_polling(tmp_path):
    from daemon.intake.watcher import choose_mode, filesystem_type, needs_polling

    mounts = tmp_path / "mounts"
    mounts.write_text("/dev/sda1 / ext4 rw 0 0\nnas:/share /mnt/nas nfs4 rw 0 0\n"
                      "//srv/x /mnt/smb\\040share cifs rw 0 0\nsshfs#a /mnt/fuse fuse.sshfs rw 0 0\n")
    assert filesystem_type("/mnt/nas/inbox", mounts) == "nfs4"
    assert filesystem_type("/mnt/smb share/in", mounts) == "cifs"
    assert filesystem_type("/home/x", mounts) == "ext4"
    assert filesystem_type("/mnt/fuse/a", mounts) == "fuse.sshfs"
    assert choose_mode("polling", tmp_path) == "polling"
    fs = filesystem_type(tmp_path)
    assert not needs_polling(fs), f"this test needs its temporary folder on a local filesystem, not {fs}"
    assert choose_mode("auto", tmp_path) == "inotify"


def test_watcher_reports_new_files_not_intakes_own_reads_and_moves_out(tmp_path):
    from daemon.intake.watcher import start_observer

    events = []
    (tmp_path / "subfolder").mkdir()
    old = write_image(tmp_path / "subfolder" / "old.png")
    observer = start_observer(tmp_path, "inotify", 0.1, events.append)
    try:
        old.read_bytes()  # intake validating a file
        os.rename(old, tmp_path.parent / "moved-out.png")  # intake moving a pair away
        new = write_sidecar(tmp_path / "subfolder" / "new.json")
        deadline = time.monotonic() + 10
        while str(new) not in [e.path for e in events] and time.monotonic() < deadline:
            time.sleep(0.01)
        seen = [e.path for e in events]
    finally:
        observer.stop()
        observer.join(timeout=5)
    assert set(seen) == {str(new)}  # no event for the read, the move out, or the folder itself
