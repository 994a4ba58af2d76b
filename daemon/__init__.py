"""i2vd: the inbox daemon (intake, queue, worker, CLI, service plumbing)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("i2vd")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"
