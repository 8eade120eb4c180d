"""oci/state.py: a ukvm-oci container's state on disk, and the log the shim reads.

Imported by every ukvm-oci command, so it stays light: os, sys, time, marshal (all built in);
not json, whose re, enum and collections cost more than the rest of a command. State lives in
ROOT/ukvm-oci/ID/state.bin (marshal: only ukvm-oci reads it; runc keeps ROOT/ID for its own
containers), and the little JSON ukvm-oci prints is written by json_text().
"""
from __future__ import annotations

import marshal
import os
import sys
import time

from ukvm.errors import UkvmError

OCI_VERSION = "1.0.2"
DEFAULT_ROOT = "/run/ukvm-oci"
ANNOTATION = "com.urunc.unikernel."
UKVM_BLOCKS = "com.ukvm.blocks"
CRI_CONTAINER_TYPE = "io.kubernetes.cri.container-type"
STATE = "state.bin"


class OciError(UkvmError):
    pass


def check_spec(spec) -> dict:
    """The bundle's config.json, in the shapes ukvm-oci reads it in (the OCI spec's types), so that
    a hand-made or hostile bundle is refused in one line, not by a traceback further on."""
    if not isinstance(spec, dict):
        raise OciError("config.json: not a JSON object")
    for name in ("annotations", "root", "linux", "process"):
        if not isinstance(spec.get(name) or {}, dict):
            raise OciError(f"config.json: {name} is not a JSON object")
    annotations = spec.get("annotations") or {}
    if not all(isinstance(v, str) for v in annotations.values()):
        raise OciError("config.json: an annotation's value is not a string")
    if not isinstance((spec.get("root") or {}).get("path", ""), str):
        raise OciError("config.json: root.path is not a string")
    linux = spec.get("linux") or {}
    namespaces = linux.get("namespaces") or []
    if not isinstance(linux.get("cgroupsPath") or "", str) \
            or not isinstance(namespaces, list) or not all(isinstance(ns, dict) for ns in namespaces):
        raise OciError("config.json: linux.cgroupsPath or namespaces is not of the spec's type")
    check_resources(linux.get("resources") or {}, "config.json: linux.resources")
    return spec


def check_resources(resources, where: str) -> dict:
    """linux.resources in the shapes cgroups.py reads (from config.json, or `update`'s file)."""
    if not isinstance(resources, dict) or not all(isinstance(resources.get(k) or {}, dict)
                                                  for k in ("cpu", "memory", "pids")):
        raise OciError(f"{where}: not linux.resources' JSON object (cpu, memory and pids objects)")
    cpu = resources.get("cpu") or {}
    if not all(isinstance(cpu.get(k) or "", str) for k in ("cpus", "mems")):
        raise OciError(f"{where}: cpu.cpus and cpu.mems are strings")
    return resources


def is_sandbox(spec: dict) -> bool:
    """A CRI sandbox (the pod's pause container, which may carry the pod's unikernel annotations)."""
    return (spec.get("annotations") or {}).get(CRI_CONTAINER_TYPE) == "sandbox"


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _json_str(s: str) -> str:
    return '"' + "".join(_ESCAPES.get(ch) or (f"\\u{ord(ch):04x}" if ch < " " else ch) for ch in s) + '"'


def json_text(value, indent: int | None = None, _level: int = 0) -> str:
    """JSON for the few shapes ukvm-oci prints (dicts, lists, strings, numbers, booleans, None),
    in json.dumps' layout, without importing json."""
    if isinstance(value, str):
        return _json_str(value)
    if value is True or value is False or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, (int, float)):
        return repr(value)
    pad = "" if indent is None else "\n" + " " * (indent * (_level + 1))
    end = "" if indent is None else "\n" + " " * (indent * _level)
    sep = ", " if indent is None else ","
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = [f"{pad}{_json_str(str(k))}: {json_text(v, indent, _level + 1)}" for k, v in value.items()]
        return "{" + sep.join(items) + end + "}"
    if isinstance(value, (list, tuple)):
        if not value:
            return "[]"
        return "[" + sep.join(pad + json_text(v, indent, _level + 1) for v in value) + end + "]"
    raise TypeError(f"not JSON: {type(value).__name__}")


class _ScannerContext:
    """What CPython's C JSON scanner reads from json's decoder: json.loads' defaults."""
    strict = True
    object_hook = object_pairs_hook = None
    parse_float, parse_int, parse_constant = float, int, float      # NaN, Infinity, -Infinity


def parse_json(text: str):
    """json.loads(text) without importing json (with re and enum, ~10 ms of a create here): the
    C scanner json itself uses (_json). Whatever it declines, or an interpreter without it, goes
    to json, for json's own result or error message."""
    try:
        import _json
        start = len(text) - len(text.lstrip(" \t\n\r"))
        value, end = _json.make_scanner(_ScannerContext())(text, start)
        if not text[end:].strip(" \t\n\r"):
            return value
    except Exception:       # noqa: BLE001  (json says what is wrong)
        pass
    import json
    return json.loads(text)


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
        line = json_text({"level": level, "msg": message, "time": now}) if self.fmt == "json" else \
            f'time="{now}" level={level} msg={json_text(message)}'
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
        return os.path.exists(os.path.join(self.dir, STATE))

    def load(self) -> dict:
        try:
            with open(os.path.join(self.dir, STATE), "rb") as f:
                state = marshal.load(f)
        except (OSError, EOFError, ValueError, TypeError):
            raise OciError(f"container {self.id} does not exist") from None
        if not isinstance(state, dict):
            raise OciError(f"container {self.id}: damaged state")
        return state

    def save(self, state: dict) -> None:
        tmp = os.path.join(self.dir, STATE + ".tmp")
        with open(tmp, "wb") as f:
            marshal.dump(state, f)
        os.replace(tmp, os.path.join(self.dir, STATE))

    def status(self, state: dict) -> str:
        if not alive(state["pid"], state["start_time"]):
            return "stopped"
        if os.path.exists(self.fifo):
            return "created"
        return "paused" if frozen(state) else "running"

    def remove(self) -> None:
        for name in ("exec.fifo", STATE, STATE + ".tmp"):
            try:
                os.unlink(os.path.join(self.dir, name))
            except FileNotFoundError:
                pass
        try:
            os.rmdir(self.dir)
        except OSError:
            pass


def freezer_file(state: dict) -> tuple[str, str, str] | None:
    """(the cgroup's freeze file, its frozen value, its thawed value), or None without a cgroup."""
    group = state.get("cgroup") or {}
    dirs = group.get("dirs") or {}
    if group.get("version") == 2 and "" in dirs:
        return os.path.join(dirs[""], "cgroup.freeze"), "1", "0"
    if "freezer" in dirs:
        return os.path.join(dirs["freezer"], "freezer.state"), "FROZEN", "THAWED"
    return None


def frozen(state: dict) -> bool:
    f = freezer_file(state)
    try:
        with open(f[0]) as fd:
            return fd.read().strip() in ("1", "FROZEN")
    except (OSError, TypeError):
        return False


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
