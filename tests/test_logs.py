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


LEAK_SECRETS = """
import logging, pathlib, sys
from daemon import logs
logs.configure(pathlib.Path(sys.argv[1]), "debug", console=True)
url = "https://hook-user:hook-pass@receiver.example/hook?token=query-token"
logging.getLogger("some.library").warning("POST %s failed", url)
logs.get_logger("test").info("reloaded", changed={"webhook_urls": [url]},
                             database="postgresql://db-user:db-pass@h/i2vd")
logs.get_logger("test").info("header", value="Authorization: Bearer bearer-token-123")
try:
    raise ConnectionError(f"cannot reach {url}")
except ConnectionError:
    logs.get_logger("test").exception("failed")
"""


def test_no_credentials_query_strings_or_tokens_in_any_line(tmp_path):
    log_file = tmp_path / "i2vd.log"
    console = subprocess.run([sys.executable, "-c", LEAK_SECRETS, str(log_file)], check=True, timeout=60,
                             capture_output=True, text=True).stderr
    written = log_file.read_text()
    for text in (written, console):
        assert len(text.splitlines()) >= 4 and "receiver.example/hook" in text and "ConnectionError" in text
        for secret in ("hook-user", "hook-pass", "query-token", "db-user", "db-pass", "bearer-token-123"):
            assert secret not in text
