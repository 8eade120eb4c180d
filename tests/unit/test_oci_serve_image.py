"""`ukvm oci build --serve` and the serve options ukvm-oci reads back (oci/serve_pod.py)."""
import io
import json
import subprocess
import sys
import tarfile

import pytest

from ukvm.errors import UsageError
from ukvm.oci import serve_pod
from conftest import ROOT


def test_options_defaults_and_round_trip():
    opts = serve_pod.parse("guest-port=80")
    assert opts == {"guest-port": 80, "port": 80, "metrics-port": 9100, "pool": 2}
    assert serve_pod.parse(serve_pod.format_options(opts)) == opts


@pytest.mark.parametrize("text, message", [
    ("", "guest-port is required"), ("guest-port=80,cmd=rm", "bad option 'cmd=rm'"),
    ("guest-port=x", "bad option 'guest-port=x'"), ("guest-port=70000", "guest-port=70000 is not a port"),
    ("guest-port=80,port=9100", "the ports must differ"), ("guest-port=80,pool=0", "pool must be at least 1")])
def test_bad_options_are_refused(text, message):
    with pytest.raises(UsageError, match=message):
        serve_pod.parse(text)


def test_argv_listens_on_the_pod_and_keeps_clones_link_local():
    argv = serve_pod.serve_argv("guest-port=80,port=8080,pool=3", "/r/app.hvt", 64, "--port=80", ["py", "-c", "x"])
    assert argv[:4] == ["py", "-c", "x", "serve"]
    assert "--listen=0.0.0.0:8080" in argv and "--guest=169.254.77.2:80" in argv and "--pool=3" in argv
    assert "--metrics=0.0.0.0:9100" in argv and "--mem=64" in argv
    assert argv[argv.index("--") + 1:] == ["/r/app.hvt", "--ipv4=169.254.77.2/24", "--ipv4-gateway=169.254.77.1",
                                           "--port=80"]


def test_build_writes_the_serve_key(tmp_path):
    hello = tmp_path / "hello.hvt"
    subprocess.run([sys.executable, "-m", "ukvm", "build", ROOT / "examples" / "hello", "-o", hello], check=True,
                   capture_output=True, timeout=120)
    out = tmp_path / "img.tar"
    p = subprocess.run([sys.executable, "-m", "ukvm", "oci", "build", hello, "-o", out, "--serve", "--guest-port=80",
                        "--port", "8080"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    with tarfile.open(out) as tar:
        blobs = [json.loads(tar.extractfile(m).read()) for m in tar.getmembers()
                 if m.name.startswith("blobs/") and m.size < 100000 and tar.extractfile(m).read(1) == b"{"]
    manifest = next(b for b in blobs if b.get("mediaType", "").endswith("manifest.v1+json"))
    assert manifest["annotations"]["com.ukvm.serve"] == "guest-port=80,port=8080,metrics-port=9100,pool=2"


@pytest.mark.parametrize("args, message", [
    (["--guest-port=80"], "--guest-port needs --serve"), (["--serve"], "guest-port is required")])
def test_build_usage_errors_are_one_line(tmp_path, args, message):
    p = subprocess.run([sys.executable, "-m", "ukvm", "oci", "build", tmp_path / "x.hvt", "-o", tmp_path / "o.tar",
                        *args], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr, p.stderr


@pytest.mark.parametrize("text", ["guest-port=" + "9" * 5000, "guest-port=80,pool=99999999999", "guest-port=٨٠"])
def test_a_hostile_images_numbers_are_one_line(text):
    """Digits past int()'s limit, a pool no build makes, non-ASCII digits: UsageError, not ValueError."""
    with pytest.raises(UsageError, match="bad option|pool must be"):
        serve_pod.parse(text)
