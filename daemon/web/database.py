"""The web's hold on a SQLite file: a file moved away or replaced under it is noticed by its inode."""

from __future__ import annotations

import os
import threading

from sqlalchemy import Engine

from daemon.logs import get_logger
from daemon.web.errors import Unavailable

log = get_logger("i2vd.web")


class SqliteFile:
    """Checked before each request: an open connection would go on writing into a moved file, where no
    daemon ever looks, so a replaced file means reconnecting and a missing one means refusing."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.path = engine.url.database or ""
        self._lock = threading.Lock()
        self._identity = self._stat()

    def _stat(self) -> tuple[int, int] | None:
        try:
            info = os.stat(self.path)
        except OSError:
            return None
        return info.st_dev, info.st_ino

    def check(self) -> None:
        identity = self._stat()
        if identity == self._identity:
            return
        if identity is None:
            log.error("web_database_missing", path=self.path)
            raise Unavailable("database_missing", f"The database file {self.path} is gone.",
                              "Start a daemon (or restore the file); the web reconnects to the new one.")
        with self._lock:
            if identity != self._identity:
                self.engine.dispose()  # pooled connections still point at the old file
                log.warning("web_database_replaced", path=self.path)
                self._identity = identity
