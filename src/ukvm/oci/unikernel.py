"""oci/unikernel.py: what a container's image says about its unikernel, read as hostile input.

urunc's keys (com.urunc.unikernel.* annotations in config.json, or /urunc.json in the rootfs)
decide whether a container is a unikernel, which binary, command line and block images it has.
Every path from the image is opened inside the rootfs by safeopen and held by fd: the tender gets
/proc/self/fd/N of files ukvm-oci checked to be regular, never a path it could be raced on.
"""
from __future__ import annotations

import binascii
import os

from ukvm.oci.safeopen import O_PATH, ImageFileError, open_regular, read_capped
from ukvm.oci.serve_pod import UKVM_SERVE
from ukvm.oci.state import ANNOTATION, UKVM_BLOCKS, OciError, is_sandbox, parse_json

URUNC_JSON = "/urunc.json"
URUNC_JSON_MAX = 64 << 10          # urunc's own files are a few hundred bytes
MIB = 1 << 20
DEFAULT_MEM_MIB = 512
MIN_GUEST_MIB = 2
GUEST_MAX_MIB = 4 << 10            # hvt's largest guest (hvt_abi.MEM_MAX)
# What the tender itself needs besides the guest's memory (the interpreter, ukvm, KVM's page
# tables, the network ring), charged to the same cgroup: its RSS measured 10-11 MiB (4-5 MiB
# anonymous) on this host, at 64 and 512 MiB guests; the rest is headroom, so that a guest using
# all of its memory does not get the container OOM-killed.
TENDER_MIB = 32


def unikernel_config(spec: dict, root_fd: int) -> dict[str, str] | None:
    """urunc's keys for this container, or None when it is not a unikernel to run here (no hvt
    unikernel binary in its rootfs). OciError, naming the file, when the image is hostile: a
    /urunc.json or binary that is not a regular file inside the rootfs, or too large a JSON."""
    if is_sandbox(spec):
        return None
    annotations = spec.get("annotations") or {}
    keys = {k: v for k, v in annotations.items() if k.startswith(ANNOTATION) or k in (UKVM_BLOCKS, UKVM_SERVE)}
    try:
        data = read_capped(root_fd, URUNC_JSON, URUNC_JSON_MAX)
    except ImageFileError as e:
        if not e.missing or _is_entry(root_fd, URUNC_JSON):
            raise OciError(f"image refused: {e if not e.missing else URUNC_JSON + ': a symlink to nothing in the image'}") from None
        data = None
    if data is not None:
        try:
            from_file = parse_json(data.decode())
            for k, v in from_file.items():
                if isinstance(k, str) and isinstance(v, str):
                    keys.setdefault(k, binascii.a2b_base64(v, strict_mode=True).decode())
        except (ValueError, AttributeError, UnicodeDecodeError, binascii.Error):
            raise OciError(f"image refused: {URUNC_JSON}: not urunc's JSON of base64 strings") from None
    binary = keys.get(ANNOTATION + "binary")
    if not binary or keys.get(ANNOTATION + "hypervisor", "hvt") != "hvt":
        return None
    try:
        fd, _ = open_regular(root_fd, binary)
    except ImageFileError as e:
        if e.missing:
            return None                  # annotations, but no binary: not ours
        raise OciError(f"image refused: {e}") from None
    os.close(fd)
    return keys


def _is_entry(root_fd: int, top_level: str) -> bool:
    """Whether the rootfs has an entry (a dangling symlink, say) by this name, not following it."""
    try:
        os.close(os.open(top_level.lstrip("/"), O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=root_fd))
        return True
    except OSError:
        return False


def guest_mem_mib(spec: dict) -> int:
    """The guest's memory: the container's memory limit less the tender's own share (both are
    charged to the container's cgroup), at most what an hvt guest can address; no limit: hvt's
    default. OciError for a limit that leaves the guest nothing."""
    limit = (((spec.get("linux") or {}).get("resources") or {}).get("memory") or {}).get("limit")
    if not isinstance(limit, int) or limit <= 0:
        return DEFAULT_MEM_MIB
    guest = limit // MIB - TENDER_MIB
    if guest < MIN_GUEST_MIB:
        raise OciError(f"memory limit {limit} bytes: the tender needs {TENDER_MIB} MiB of it and the guest "
                       f"at least {MIN_GUEST_MIB} MiB (set at least {TENDER_MIB + MIN_GUEST_MIB} MiB)")
    return min(guest, GUEST_MAX_MIB)


def address_args(ip: str, gateway: str | None) -> str:
    """The guest's address at the front of its command line, as urunc passes it to Solo5 guests
    (the lwIP example and MirageOS read these); no gateway, no --ipv4-gateway."""
    return f"--ipv4={ip}" + (f" --ipv4-gateway={gateway}" if gateway else "")


class Unikernel:
    """The checked image of one container: its binary and block images as O_PATH fds (kept open,
    inheritable, for the tender), its devices, command line and keys."""

    def __init__(self, keys: dict[str, str], root_fd: int):
        from ukvm.errors import UkvmError
        from ukvm.machine.manifest import MFT_DEV_BLOCK_BASIC, MFT_DEV_NET_BASIC
        from ukvm.machine.vm import Kernel
        self.keys = keys
        self.fds: list[int] = []
        self.binary_path = keys[ANNOTATION + "binary"]
        self.binary = self._hold(root_fd, self.binary_path)
        try:
            kernel = Kernel(self.binary)
        except UkvmError as e:           # the loader's words, about the image's path
            raise OciError(str(e).replace(self.binary, os.path.basename(self.binary_path))) from None
        try:
            devices = kernel.manifest().devices()
        finally:
            kernel.close()
        self.nics = [e.name for e in devices if e.type == MFT_DEV_NET_BASIC]
        self.device_count = len(devices)
        block_names = [e.name for e in devices if e.type == MFT_DEV_BLOCK_BASIC]
        given = dict(item.split("=", 1) for item in keys.get(UKVM_BLOCKS, "").split(",") if "=" in item)
        if not given and keys.get(ANNOTATION + "block") and len(block_names) == 1:
            given = {block_names[0]: keys[ANNOTATION + "block"]}
        self.blocks = {name: self._hold(root_fd, path) for name, path in given.items()}
        self.cmdline = keys.get(ANNOTATION + "cmdline", "")

    def _hold(self, root_fd: int, path: str) -> str:
        try:
            fd, _ = open_regular(root_fd, path)
        except ImageFileError as e:
            raise OciError(f"image refused: {e}") from None
        os.set_inheritable(fd, True)
        self.fds.append(fd)
        return f"/proc/self/fd/{fd}"

    def tender_argv(self, mem_mib: int, net: dict | None, boot: list[str]) -> list[str]:
        """`ukvm run` for this unikernel; `boot` starts the interpreter with ukvm importable."""
        from ukvm.options import BLOCK, MEM, NET, NET_MAC      # the rows `ukvm run` parses them with
        argv = [*boot, "run", MEM.render(mem_mib)]
        argv += [BLOCK.render(path, name) for name, path in self.blocks.items()]
        cmdline = self.cmdline
        if self.nics and net is not None:
            argv += [NET.render(net["tap"], self.nics[0]), NET_MAC.render(net["mac"], self.nics[0])]
            if net.get("ip"):
                cmdline = f"{address_args(net['ip'], net.get('gateway'))} {cmdline}".strip()
        return argv + ["--", self.binary] + (cmdline.split() if cmdline else [])
