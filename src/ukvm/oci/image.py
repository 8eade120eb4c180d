"""oci/image.py: `ukvm oci build`: a unikernel as an OCI image archive in urunc's format.

The archive is an OCI image layout (oci-layout, index.json, blobs/sha256/...) that
`ctr images import` and `docker load`-like tools take. Its single layer holds the unikernel at
/unikernel/APP.hvt, block images under /unikernel/block/, and /urunc.json; the same urunc
annotations (com.urunc.unikernel.*) are on the manifest and in the image config's labels, so
the image runs under urunc and under ukvm-oci alike (docs/kubernetes.md).
"""
from __future__ import annotations

import base64
import errno
import hashlib
import io
import json
import os
import tarfile
import time

from ukvm.errors import UkvmError, UsageError
from ukvm.oci import serve_pod
from ukvm.options import Option, OptionTable, anything, integer, name_and_path, text

ANNOTATION = "com.urunc.unikernel."
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"
# ukvm's own key for several named block devices ("NAME=PATH,NAME=PATH"); urunc's `block` names
# one image without a device name.
UKVM_BLOCKS = "com.ukvm.blocks"


def urunc_json(annotations: dict[str, str]) -> bytes:
    """/urunc.json: the annotations with base64-encoded values, as urunc reads them."""
    return json.dumps({k: base64.b64encode(v.encode()).decode() for k, v in annotations.items()},
                      indent=1, sort_keys=True).encode()


CHUNK = 1 << 20


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 0
    tar.addfile(info, io.BytesIO(data))


def _add_file(tar: tarfile.TarFile, name: str, path: str, mode: int) -> None:
    """A file from disk, streamed (a block image may be larger than memory)."""
    with open(path, "rb") as f:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = os.fstat(f.fileno()).st_size, mode, 0
        tar.addfile(info, f)


def _dir(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
    tar.addfile(info)


def _blob(out: tarfile.TarFile, data: bytes) -> tuple[str, int]:
    digest = hashlib.sha256(data).hexdigest()
    _add(out, f"blobs/sha256/{digest}", data)
    return f"sha256:{digest}", len(data)


def _file_blob(out: tarfile.TarFile, path: str) -> tuple[str, int]:
    """A blob from a file on disk, hashed and copied a chunk at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
        f.seek(0)
        info = tarfile.TarInfo(f"blobs/sha256/{digest.hexdigest()}")
        info.size, info.mode, info.mtime = os.fstat(f.fileno()).st_size, 0o644, 0
        out.addfile(info, f)
    return f"sha256:{digest.hexdigest()}", info.size


def image_name(tag: str) -> str:
    """A full reference: `hello` -> docker.io/library/hello:latest, as containerd names images."""
    name, colon, version = tag.rpartition(":")
    if not colon or "/" in version:
        name, version = tag, "latest"
    domain = name.split("/")[0]
    if "/" not in name:
        name = f"docker.io/library/{name}"
    elif "." not in domain and ":" not in domain and domain != "localhost":
        name = f"docker.io/{name}"
    return f"{name}:{version}"


def write_archive(output: str, files: list[tuple], config: dict, annotations: dict[str, str], tag: str) -> str:
    """An OCI image layout archive with one layer of `files`: (path, bytes or a file on disk to
    stream, mode), or a ready tarfile.TarInfo for anything else (links, devices, FIFOs: tests
    build hostile images with them); `config` is the image config's `config` part. The layer
    goes through a temporary file beside `output`, so memory use does not grow with the images.
    Returns the image's full name."""
    import tempfile
    layer_fd, layer_path = tempfile.mkstemp(prefix=".layer-", dir=os.path.dirname(os.path.abspath(output)))
    try:
        with os.fdopen(layer_fd, "wb") as layer, \
                tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as tar:
            made = set()
            for entry in files:
                path = entry.name if isinstance(entry, tarfile.TarInfo) else entry[0]
                parts = path.strip("/").split("/")
                for i in range(1, len(parts)):
                    d = "/".join(parts[:i])
                    if d not in made:
                        _dir(tar, d)
                        made.add(d)
                if isinstance(entry, tarfile.TarInfo):
                    entry.name = "/".join(parts)
                    tar.addfile(entry)
                elif isinstance(entry[1], (bytes, bytearray)):
                    _add(tar, "/".join(parts), entry[1], entry[2])
                else:
                    _add_file(tar, "/".join(parts), os.fspath(entry[1]), entry[2])
        return _write_layout(output, layer_path, config, annotations, tag)
    finally:
        os.unlink(layer_path)


def _write_layout(output: str, layer_path: str, config: dict, annotations: dict[str, str], tag: str) -> str:
    full = image_name(tag)
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with tarfile.open(output, "w", format=tarfile.PAX_FORMAT) as out:
        layer_digest, layer_size = _file_blob(out, layer_path)
        image_config = {"created": created, "architecture": "amd64", "os": "linux", "config": config,
                        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
                        "history": [{"created": created, "created_by": "ukvm oci build"}]}
        config_digest, config_size = _blob(out, json.dumps(image_config, sort_keys=True).encode())
        manifest = {"schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
                    "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest, "size": config_size},
                    "layers": [{"mediaType": MEDIA_LAYER, "digest": layer_digest, "size": layer_size}]}
        if annotations:
            manifest["annotations"] = annotations
        manifest_digest, manifest_size = _blob(out, json.dumps(manifest, sort_keys=True).encode())
        index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                 "manifests": [{"mediaType": MEDIA_MANIFEST, "digest": manifest_digest, "size": manifest_size,
                                "annotations": {"io.containerd.image.name": full,
                                                "org.opencontainers.image.ref.name": full.rpartition(":")[2]}}]}
        _add(out, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        _add(out, "index.json", json.dumps(index, sort_keys=True).encode())
    return full


def build_image(app: str, output: str, tag: str, cmdline: str = "",
                blocks: list[tuple[str, str]] | None = None, serve: str | None = None) -> str:
    """A unikernel image in urunc's format; returns the image's full name. `serve`: the
    com.ukvm.serve options (the container runs `ukvm serve`, oci/serve_pod.py)."""
    from ukvm.machine.vm import Kernel          # checks the image is an hvt unikernel with a manifest
    kernel = Kernel(app)
    kernel.close()
    app_path = "/unikernel/" + os.path.basename(app)
    annotations = {ANNOTATION + "binary": app_path, ANNOTATION + "cmdline": cmdline,
                   ANNOTATION + "unikernelType": "solo5", ANNOTATION + "hypervisor": "hvt"}
    files: list[tuple] = [(app_path, app, 0o755)]
    if blocks:
        placed = []
        for name, path in blocks:          # streamed into the layer when the archive is written
            if not os.path.isfile(path) or not os.access(path, os.R_OK):
                err = os.strerror(errno.ENOENT) if not os.path.exists(path) else \
                    ("not a regular file" if not os.path.isfile(path) else os.strerror(errno.EACCES))
                raise UsageError(f"--block {name}={path}: {err}", show_usage=False)
            files.append((f"/unikernel/block/{name}", path, 0o644))
            placed.append(f"{name}=/unikernel/block/{name}")
        annotations[ANNOTATION + "block"] = f"/unikernel/block/{blocks[0][0]}"
        annotations[UKVM_BLOCKS] = ",".join(placed)
    if serve is not None:
        from ukvm.oci.serve_pod import UKVM_SERVE
        annotations[UKVM_SERVE] = serve
    files.append(("/urunc.json", urunc_json(annotations), 0o644))
    # CRI requires a command; ukvm-oci and urunc run the unikernel instead of it.
    config = {"Labels": annotations, "Entrypoint": [app_path], "Cmd": cmdline.split() if cmdline else [], "Env": []}
    return write_archive(output, files, config, annotations, tag)


BUILD_OPTIONS = OptionTable([
    Option("output", "the image archive to write", text(4096, spaces=True), metavar="IMAGE.tar", aliases=("-o",)),
    Option("tag", "the image's name (default: APP's file name without .hvt)", anything, metavar="NAME[:TAG]"),
    Option("cmdline", "the unikernel's command line", anything, metavar="ARGS", default=""),
    Option("block", "a disk image for block device NAME", name_and_path, metavar="NAME=FILE", repeat=True),
    # --serve: the container runs `ukvm serve` on the pod's IP (oci/serve_pod.py).
    Option("serve", "the container serves each connection from a fresh clone (ukvm serve)"),
    Option("guest-port", "--serve: the port the unikernel listens on", integer(1, 65535), metavar="PORT"),
    Option("port", "--serve: the pod's port (default: the guest's)", integer(1, 65535), metavar="PORT"),
    Option("metrics-port", "--serve: Prometheus metrics (default 9100)", integer(1, 65535), metavar="PORT"),
    Option("pool", "--serve: clones serving at once (default 2)", integer(1, serve_pod.MAX_POOL), metavar="N"),
], style="gnu")
SERVE_OPTIONS = ("guest-port", "port", "metrics-port", "pool")
OCI_USAGE = ("usage: ukvm oci build APP.hvt -o IMAGE.tar [--tag NAME[:TAG]] [--cmdline \"ARGS\"] [--block NAME=FILE]...\n"
             "       ukvm oci build --serve --guest-port=PORT [--port=PORT] [--metrics-port=PORT] [--pool=N] APP.hvt -o IMAGE.tar\n"
             "       ukvm oci launcher PATH\n"
             "build: an OCI image archive in urunc's format (for `ctr images import`); launcher: the lean\n"
             "ukvm-oci executable for containerd's BinaryName; see docs/kubernetes.md.\n"
             + BUILD_OPTIONS.usage())


def oci_main(argv: list[str]) -> int:
    import sys
    err = sys.stderr
    if argv[:1] == ["launcher"] and len(argv) == 2 and not argv[1].startswith("-"):
        from ukvm.oci.launcher import write_launcher
        try:
            write_launcher(argv[1])
        except OSError as e:
            print(f"ukvm oci: {argv[1]}: {e.strerror}", file=err)
            return 1
        return 0
    if not argv or argv[0] != "build" or "--help" in argv or "-h" in argv:
        print(OCI_USAGE, file=err)
        return 0 if argv and argv[0] != "build" and ("--help" in argv or "-h" in argv) else 2
    try:
        values, positional = BUILD_OPTIONS.parse(argv[1:], positionals="mix")
        app, output = (positional[0] if positional else None), values["output"]
        if len(positional) > 1:
            raise UsageError(f"unexpected argument {positional[1]!r}")
        if app is None or output is None:
            raise UsageError("APP.hvt and -o IMAGE.tar are required")
        tag, cmdline, blocks = values["tag"], values["cmdline"], values["block"]
        serve = None
        given = {k: values[k] for k in SERVE_OPTIONS if values[k] is not None}
        if values["serve"]:
            from ukvm.oci import serve_pod
            serve = serve_pod.format_options(serve_pod.parse(serve_pod.format_options(given), "--serve"))
        elif given:
            raise UsageError(f"--{next(iter(given))} needs --serve")
        full = build_image(app, output, tag or os.path.splitext(os.path.basename(app))[0], cmdline, blocks, serve)
    except UkvmError as e:
        print(f"ukvm oci: {e}", file=err)
        return 2 if isinstance(e, UsageError) else 1
    except OSError as e:
        print(f"ukvm oci: {output}: {os.strerror(e.errno)}", file=err)
        return 1
    print(f"ukvm oci: wrote {output} ({full})", file=err)
    return 0
