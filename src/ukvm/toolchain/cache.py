"""cache.py: where ukvm keeps what it builds once (the runtime's objects).

Kept apart from build.py so that `ukvm run` finds a cached image without importing the toolchain
driver (docs/performance.md: start-up imports)."""
import os


def cache_dir() -> str:
    return os.environ.get("UKVM_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ukvm")
