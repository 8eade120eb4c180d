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
from ukvm.oci.runtime import OciError, inside, memory_mib, parse_signal, unikernel_config

KEYS = {ANNOTATION + "binary": "/unikernel/app.hvt", ANNOTATION + "hypervisor": "hvt",
        ANNOTATION + "unikernelType": "solo5"}


@pytest.fixture
def rootfs(tmp_path):
    (tmp_path / "unikernel").mkdir()
    (tmp_path / "unikernel" / "app.hvt").write_bytes(b"x")
    return tmp_path


def test_a_unikernel_by_annotations_or_urunc_json(rootfs):
    assert unikernel_config({"annotations": KEYS}, str(rootfs))[ANNOTATION + "binary"] == "/unikernel/app.hvt"
    assert unikernel_config({}, str(rootfs)) is None                      # no keys at all: runc's
    (rootfs / "urunc.json").write_bytes(urunc_json({**KEYS, ANNOTATION + "cmdline": "a b"}))
    keys = unikernel_config({}, str(rootfs))
    assert keys[ANNOTATION + "cmdline"] == "a b" and keys[ANNOTATION + "hypervisor"] == "hvt"


def test_what_goes_to_runc(rootfs):
    sandbox = {"annotations": {**KEYS, "io.kubernetes.cri.container-type": "sandbox"}}
    assert unikernel_config(sandbox, str(rootfs)) is None                 # the pod's pause container
    assert unikernel_config({"annotations": {**KEYS, ANNOTATION + "hypervisor": "qemu"}}, str(rootfs)) is None
    os.unlink(rootfs / "unikernel" / "app.hvt")
    assert unikernel_config({"annotations": KEYS}, str(rootfs)) is None   # annotations, but no binary


def test_paths_stay_inside_the_rootfs(rootfs, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    (rootfs / "escape").symlink_to(outside)
    assert inside(str(rootfs), "/unikernel/app.hvt") == str(rootfs / "unikernel" / "app.hvt")
    for path in ("/../../etc/passwd", "/escape/x", "../x"):
        with pytest.raises(OciError, match="leaves the container's rootfs"):
            inside(str(rootfs), path)


def test_memory_limit_becomes_guest_memory():
    assert memory_mib({"linux": {"resources": {"memory": {"limit": 64 << 20}}}}) == 64
    assert memory_mib({"linux": {"resources": {"memory": {"limit": 1000}}}}) == 2
    assert memory_mib({}) == 512


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
