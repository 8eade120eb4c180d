"""ukvm-oci's decisions and `ukvm oci build`'s archive, without containerd."""
import base64
import json
import os
import signal
import subprocess
import sys
import tarfile

import pytest

from ukvm.oci.image import ANNOTATION, image_name, urunc_json, write_archive
from ukvm.oci.runtime import OciError, parse_signal
from ukvm.oci.safeopen import open_root
from ukvm.oci.unikernel import TENDER_MIB, guest_mem_mib, unikernel_config


def config(spec, rootfs):
    fd = open_root(str(rootfs))
    try:
        return unikernel_config(spec, fd)
    finally:
        os.close(fd)

KEYS = {ANNOTATION + "binary": "/unikernel/app.hvt", ANNOTATION + "hypervisor": "hvt",
        ANNOTATION + "unikernelType": "solo5"}


@pytest.fixture
def rootfs(tmp_path):
    (tmp_path / "unikernel").mkdir()
    (tmp_path / "unikernel" / "app.hvt").write_bytes(b"x")
    return tmp_path


def test_a_unikernel_by_annotations_or_urunc_json(rootfs):
    assert config({"annotations": KEYS}, rootfs)[ANNOTATION + "binary"] == "/unikernel/app.hvt"
    assert config({}, rootfs) is None                      # no keys at all: runc's
    (rootfs / "urunc.json").write_bytes(urunc_json({**KEYS, ANNOTATION + "cmdline": "a b"}))
    keys = config({}, rootfs)
    assert keys[ANNOTATION + "cmdline"] == "a b" and keys[ANNOTATION + "hypervisor"] == "hvt"


def test_what_goes_to_runc(rootfs):
    sandbox = {"annotations": {**KEYS, "io.kubernetes.cri.container-type": "sandbox"}}
    assert config(sandbox, rootfs) is None                 # the pod's pause container
    assert config({"annotations": {**KEYS, ANNOTATION + "hypervisor": "qemu"}}, rootfs) is None
    os.unlink(rootfs / "unikernel" / "app.hvt")
    assert config({"annotations": KEYS}, rootfs) is None   # annotations, but no binary


def test_hostile_files_are_refused(rootfs, tmp_path_factory):
    """/urunc.json or the binary as anything but a regular file inside the rootfs: refused."""
    outside = tmp_path_factory.mktemp("outside")
    (outside / "urunc.json").write_bytes(urunc_json({**KEYS, ANNOTATION + "cmdline": "host file"}))
    (rootfs / "urunc.json").symlink_to("/dev/zero")                  # resolved in the image: no /dev there
    with pytest.raises(OciError, match="urunc.json: a symlink to nothing in the image"):
        config({}, rootfs)
    (rootfs / "dev").mkdir()
    os.mknod(rootfs / "dev" / "zero", 0o666 | 0o020000, os.makedev(1, 5))   # a device node from a layer
    with pytest.raises(OciError, match="urunc.json: a character device, not a regular file"):
        config({}, rootfs)
    os.unlink(rootfs / "urunc.json")
    (rootfs / "urunc.json").symlink_to(outside / "urunc.json")    # a host path: looked up in the image
    with pytest.raises(OciError, match="urunc.json: a symlink to nothing in the image"):
        config({}, rootfs)
    os.unlink(rootfs / "urunc.json")
    os.mkfifo(rootfs / "urunc.json")
    with pytest.raises(OciError, match="urunc.json: a FIFO"):
        config({}, rootfs)
    os.unlink(rootfs / "urunc.json")
    with open(rootfs / "urunc.json", "wb") as f:
        f.truncate(1 << 30)
    with pytest.raises(OciError, match="urunc.json: 1073741824 bytes, more than"):
        config({}, rootfs)
    os.unlink(rootfs / "urunc.json")
    os.unlink(rootfs / "unikernel" / "app.hvt")
    os.mkdir(rootfs / "unikernel" / "app.hvt")
    with pytest.raises(OciError, match="app.hvt: a directory"):
        config({"annotations": KEYS}, rootfs)


def test_guest_memory_leaves_room_for_the_tender():
    assert guest_mem_mib({"linux": {"resources": {"memory": {"limit": 128 << 20}}}}) == 128 - TENDER_MIB
    assert guest_mem_mib({"linux": {"resources": {"memory": {"limit": 64 << 40}}}}) == 4096     # hvt's largest
    assert guest_mem_mib({}) == 512
    with pytest.raises(OciError, match="the tender needs"):
        guest_mem_mib({"linux": {"resources": {"memory": {"limit": 16 << 20}}}})


def test_signals_by_name_or_number():
    assert parse_signal("SIGTERM") == parse_signal("TERM") == parse_signal("15") == signal.SIGTERM
    assert parse_signal("sigkill") == signal.SIGKILL
    with pytest.raises(OciError, match="unknown signal"):
        parse_signal("SIGBOGUS")


def test_image_names():
    assert image_name("hello") == "docker.io/library/hello:latest"
    assert image_name("me/app:2") == "docker.io/me/app:2"
    assert image_name("localhost:5000/a") == "localhost:5000/a:latest"
    assert image_name("reg.example/x/y:v") == "reg.example/x/y:v"


def test_archive_layout(tmp_path):
    out = tmp_path / "i.tar"
    name = write_archive(str(out), [("/a/b", b"data", 0o644)], {"Cmd": ["x"]}, KEYS, "t:1")
    with tarfile.open(out) as tar:
        index = json.load(tar.extractfile("index.json"))
        entry = index["manifests"][0]
        assert entry["annotations"]["io.containerd.image.name"] == name == "docker.io/library/t:1"
        manifest = json.load(tar.extractfile("blobs/sha256/" + entry["digest"].split(":")[1]))
        assert manifest["annotations"] == KEYS
        layer = tar.extractfile("blobs/sha256/" + manifest["layers"][0]["digest"].split(":")[1]).read()
    import io
    with tarfile.open(fileobj=io.BytesIO(layer)) as inner:
        assert inner.extractfile("a/b").read() == b"data" and inner.getmember("a").isdir()


def test_urunc_json_is_base64():
    data = json.loads(urunc_json(KEYS))
    assert base64.b64decode(data[ANNOTATION + "binary"]) == b"/unikernel/app.hvt"


@pytest.mark.parametrize("args, message", [
    (["build", "/nonexistent.hvt", "-o", "x.tar"], "/nonexistent.hvt"),
    (["build", "x.hvt"], "-o IMAGE.tar are required"),
    (["build", "x.hvt", "-o", "y.tar", "--block", "bad"], "--block: expected NAME=FILE"),
])
def test_oci_build_errors_are_one_line(args, message, tmp_path):
    p = subprocess.run([sys.executable, "-m", "ukvm", "oci", *args], capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode != 0 and message in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_features_is_json():
    p = subprocess.run([sys.executable, "-c", "import sys; from ukvm.oci.runtime import main; sys.exit(main())",
                        "features"], capture_output=True, text=True)
    assert p.returncode == 0 and json.loads(p.stdout)["ociVersionMax"]


def test_oci_build_streams_block_images(guest, tmp_path):
    """A 128 MiB block image goes into the archive without being held in memory (it was held
    about three times: read, layer, archive); peak RSS of the build stays far below its size."""
    app = guest("test_blk", '{"type": "solo5.manifest", "version": 1, '
                            '"devices": [{"name": "storage", "type": "BLOCK_BASIC"}]}', cpl0=False)
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(128 << 20)
    probe = ("import resource, subprocess, sys; "
             "p = subprocess.run(sys.argv[1:]); "
             "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    p = subprocess.run([sys.executable, "-c", probe, sys.executable, "-m", "ukvm", "oci", "build", str(app),
                        "-o", str(tmp_path / "i.tar"), "--block", f"storage={disk}"],
                       capture_output=True, text=True, timeout=120)
    code, maxrss_kib = map(int, p.stdout.split())
    assert code == 0, p.stderr
    assert maxrss_kib < 64 << 10, maxrss_kib
    with tarfile.open(tmp_path / "i.tar") as tar:
        sizes = sorted(m.size for m in tar.getmembers())
    assert sizes[-1] > 128 << 20                     # the layer holds the whole disk
    assert not list(tmp_path.glob(".layer-*"))       # its temporary file is gone


@pytest.mark.parametrize("value", [
    {"a": 1, "b": [1, 2], "c": {"d": "e\"\\\n\t\x01é"}, "e": [], "f": {}, "g": None, "h": True, "i": False},
    [3, 4], "plain", {"annotations": {"io.kubernetes.cri.container-type": "container"}}])
def test_json_text_is_json(value):
    from ukvm.oci.state import json_text
    for indent in (None, 2):
        assert json_text(value, indent) == json.dumps(value, indent=indent, ensure_ascii=False)
        assert json.loads(json_text(value, indent)) == value


def test_signal_table_matches_the_host():
    from ukvm.oci.runtime import SIGNALS
    for name, number in SIGNALS.items():
        if hasattr(signal, "SIG" + name):
            assert getattr(signal, "SIG" + name) == number, name


@pytest.mark.parametrize("spec", [
    [], {"annotations": ["x"]}, {"annotations": {ANNOTATION + "binary": 5}}, {"root": "rootfs"},
    {"root": {"path": 1}}, {"linux": ["x"]}, {"linux": {"resources": 1}}, {"linux": {"namespaces": ["pid"]}},
    {"linux": {"resources": {"memory": 5}}}, {"linux": {"resources": {"cpu": {"cpus": 1}}}}])
def test_config_json_of_the_wrong_types_is_one_line(spec, tmp_path):
    from ukvm.oci.runtime import cmd_create
    (tmp_path / "config.json").write_text(json.dumps(spec))
    with pytest.raises(OciError, match="^config.json: "):
        cmd_create(str(tmp_path / "state"), "c1", str(tmp_path), None, None, False, None, [])
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("text, message", [
    ("{not json", "^update: --resources: Expecting property name"), ('{"memory": 5}', "^update: --resources: not "),
    ("[1]", "^update: --resources: not ")])
def test_update_with_resources_not_of_the_spec_is_one_line(tmp_path, text, message):
    from ukvm.oci.runtime import cmd_update
    from ukvm.oci.state import Container
    c = Container(str(tmp_path), "c1")
    os.makedirs(c.dir)
    c.save({"id": "c1", "pid": 1, "start_time": 0, "cgroup": {"version": 1, "dirs": {}}})
    (tmp_path / "res.json").write_text(text)
    with pytest.raises(OciError, match=message):
        cmd_update(c, {"resources": str(tmp_path / "res.json")}, None)


BLOCK_ONLY = '{"name": "storage", "type": "BLOCK_BASIC"}'
NIC_AND_BLOCK = BLOCK_ONLY + ', {"name": "service0", "type": "NET_BASIC"}'


@pytest.mark.parametrize("devices, serve, message", [
    (BLOCK_ONLY, "guest-port=80,pool=0", "pool must be at least 1"),
    (BLOCK_ONLY, "guest-port=80", "declares no network device"),
    (NIC_AND_BLOCK, "guest-port=80", "exactly one device, its NIC \\(it declares 2\\)")])
def test_a_serve_image_is_refused_before_the_host_is_touched(guest, tmp_path, devices, serve, message):
    """com.ukvm.serve refused in create, not in the container's process: for a unikernel without
    a NIC (serve would listen in the runtime's own network namespace), or with more than its NIC."""
    import shutil
    from ukvm.oci.create import create
    from ukvm.errors import UkvmError
    from ukvm.oci.state import Container
    app = guest("test_blk", f'{{"type": "solo5.manifest", "version": 1, "devices": [{devices}]}}', cpl0=False)
    rootfs = tmp_path / "rootfs"
    (rootfs / "unikernel").mkdir(parents=True)
    shutil.copy(app, rootfs / "unikernel" / "app.hvt")
    c = Container(str(tmp_path / "state"), "c1")
    fd = open_root(str(rootfs))
    try:
        with pytest.raises(UkvmError, match=message):       # ukvm-oci's one line
            create(c, {}, str(tmp_path), str(rootfs), fd, {**KEYS, "com.ukvm.serve": serve}, None, None, False)
    finally:
        os.close(fd)
    assert not os.path.exists(c.dir)
