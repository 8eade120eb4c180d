"""`ukvm serve --dumpcore` (issue 21): a core per crashing connection, up to the per-minute bound,
named by connection and loadable by gdb with the crashing frame on top; written under serve's
sandbox (as --user nobody, into a directory it may write)."""
import os
import re
import shutil
import subprocess

import pytest

from test_serve import Served, httpd, served  # noqa: F401  (fixtures)

pytestmark = pytest.mark.skipif(shutil.which("gdb") is None, reason="needs gdb")


def test_a_core_per_crash_up_to_the_bound(served, httpd, tmp_path):  # noqa: F811
    cores = tmp_path / "cores"
    cores.mkdir()
    os.chmod(cores, 0o777)          # serve writes as --user nobody once confined
    os.chmod(tmp_path, 0o755)
    s = served("--pool=2", f"--dumpcore={cores}", "--dumpcore-per-minute=2")
    ok = s.client("get", "/before")
    assert "body" in ok, ok
    for _ in range(3):
        crashed = s.client("get", "/crash")
        assert "body" not in crashed, crashed
    after = s.client("seq", "5", "/after/")
    assert after["ok"] == 5, after["errors"]
    status, out = s.stop()
    assert status == 0, out
    files = sorted(os.listdir(cores))
    # Connections 2, 3 and 4 crashed; the bound let the first two leave a core.
    pid = re.search(r"core\.ukvm-serve\.(\d+)\.conn", " ".join(files))[1]
    assert files == [f"core.ukvm-serve.{pid}.conn2", f"core.ukvm-serve.{pid}.conn3"], (files, out)
    assert "the bound of cores a minute was reached" in out and f"conn4" in out, out
    assert all(os.stat(cores / f).st_mode & 0o777 == 0o600 for f in files)
    bt = subprocess.run(["gdb", "-batch", "-nx", "-ex", "bt", str(httpd), str(cores / files[0])],
                        capture_output=True, text=True, timeout=120).stdout
    frames = re.findall(r"^#(\d+)\s+(?:0x[0-9a-f]+ in )?(\w+)", bt, re.M)
    names = [name for _, name in frames]
    assert names and names[0] in ("solo5_abort", "hvt_halt", "abort_msg", "platform_exit"), bt
    assert "solo5_abort" in names and "on_recv" in names, bt     # the route that crashed, below


def test_trace_one_connection_in_n(served, tmp_path):  # noqa: F811
    trace = tmp_path / "serve.jsonl"
    s = served("--pool=2", f"--trace={trace}", "--trace-every=3")
    done = s.client("seq", "9", "/t/")
    assert done["ok"] == 9, done["errors"]
    status, out = s.stop()
    assert status == 0, out
    import json
    lines = [json.loads(line) for line in trace.read_text().splitlines()]   # every line parses
    conns = sorted({r["conn"] for r in lines})
    assert conns == [3, 6, 9], conns            # connections are numbered from 1 in accept order
    for n in conns:
        calls = [r["call"] for r in lines if r["conn"] == n]
        # The request arrives and the answer leaves through the NIC's hypercalls.
        assert "net_read" in calls and "net_write" in calls, calls
        assert all(r["result"]["ret"] in ("OK", "AGAIN") for r in lines
                   if r["conn"] == n and r["call"].startswith("net_")), lines
