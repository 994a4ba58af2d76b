"""The log file: JSON lines, rotated by size, with a bounded number of old files."""

from __future__ import annotations

import json
import subprocess
import sys

WRITE_EVENTS = """
import pathlib, sys
from daemon import logs
logs.configure(pathlib.Path(sys.argv[1]), console=False, max_bytes=2000, backup_count=2)
log = logs.get_logger("test")
for n in range(200):
    log.info("tick", job_id=n)
"""


def test_log_file_rotates_by_size_and_keeps_backup_count(tmp_path):
    log_file = tmp_path / "i2vd.log"
    subprocess.run([sys.executable, "-c", WRITE_EVENTS, str(log_file)], check=True, timeout=60)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i2vd.log", "i2vd.log.1", "i2vd.log.2"]
    for path in tmp_path.iterdir():
        assert path.stat().st_size <= 2000
        events = [json.loads(line) for line in path.read_text().splitlines()]
        assert events and all(e["event"] == "tick" for e in events)
    newest = [json.loads(line)["job_id"] for line in log_file.read_text().splitlines()]
    older = [json.loads(line)["job_id"] for line in (tmp_path / "i2vd.log.1").read_text().splitlines()]
    assert newest[-1] == 199 and older[-1] + 1 == newest[0]  # nothing lost between files
