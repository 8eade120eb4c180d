"""oci/state.py: a ukvm-oci container's state on disk, and the log the shim reads.

Imported by every ukvm-oci command, so it stays light: os, json, time; nothing of the tender.
State lives in ROOT/ukvm-oci/ID/state.json (runc keeps ROOT/ID for the containers it runs).
"""
from __future__ import annotations

import json
import os
import sys
import time

from ukvm.errors import UkvmError

OCI_VERSION = "1.0.2"
DEFAULT_ROOT = "/run/ukvm-oci"
ANNOTATION = "com.urunc.unikernel."
UKVM_BLOCKS = "com.ukvm.blocks"
CRI_CONTAINER_TYPE = "io.kubernetes.cri.container-type"


class OciError(UkvmError):
    pass


def utc_now() -> str:
    """RFC 3339 with nanoseconds, as runc writes times (without importing datetime)."""
    t = time.time_ns()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t // 1_000_000_000)) + f".{t % 1_000_000_000:09d}Z"


class Log:
    """runc's --log/--log-format: the shim reads the last error line of the log file."""

    def __init__(self, path: str | None, fmt: str):
        self.path, self.fmt = path, fmt

    def error(self, message: str) -> None:
        self._write("error", message)
        print(f"ukvm-oci: {message}", file=sys.stderr, flush=True)

    def warning(self, message: str) -> None:
        self._write("warning", message)

    def _write(self, level: str, message: str) -> None:
        if not self.path:
            return
        now = utc_now()
        line = json.dumps({"level": level, "msg": message, "time": now}) if self.fmt == "json" else \
            f'time="{now}" level={level} msg={json.dumps(message)}'
        try:
            with open(self.path, "a") as f:
                f.write(line + "\n")
        except OSError:
            pass


class Container:
    def __init__(self, root: str, cid: str):
        if not cid or "/" in cid or cid in (".", ".."):
            raise OciError(f"invalid container id {cid!r}")
        self.id = cid
        self.dir = os.path.join(root, "ukvm-oci", cid)
        self.fifo = os.path.join(self.dir, "exec.fifo")

    def exists(self) -> bool:
        return os.path.exists(os.path.join(self.dir, "state.json"))

    def load(self) -> dict:
        try:
            with open(os.path.join(self.dir, "state.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            raise OciError(f"container {self.id} does not exist") from None

    def save(self, state: dict) -> None:
        tmp = os.path.join(self.dir, "state.json.tmp")
        with open(tmp, "w") as f:
            json.dump(state, f)
        os.replace(tmp, os.path.join(self.dir, "state.json"))

    def status(self, state: dict) -> str:
        if not alive(state["pid"], state["start_time"]):
            return "stopped"
        return "created" if os.path.exists(self.fifo) else "running"

    def remove(self) -> None:
        for name in ("exec.fifo", "state.json", "state.json.tmp"):
            try:
                os.unlink(os.path.join(self.dir, name))
            except FileNotFoundError:
                pass
        try:
            os.rmdir(self.dir)
        except OSError:
            pass


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks: a pid reused by another process is not ours."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return None if fields[0] == "Z" else int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def alive(pid: int, started: int) -> bool:
    return pid > 0 and start_time(pid) == started
