"""A SIGTERM sent to a ukvm-oci container before its tender has installed its handlers is kept,
not lost. The tender is init of the container's PID namespace, where the kernel drops a signal
whose action is the default; ukvm-oci blocks SIGTERM/SIGINT in the container's process from
before `start` (oci/create.py). Sent between `create` and `start`, the signal lands in that window
for certain: before the fix the guest below slept on for its hour."""
import json
import shutil
import subprocess
import sys
import textwrap

from conftest import needs_kvm
from ukvm.oci.image import ANNOTATION

pytestmark = needs_kvm

# Run as a child subreaper, so that the container's process (create's child, orphaned when create
# exits) is this script's to wait for, as it is the shim's under containerd.
LIFECYCLE = textwrap.dedent("""
    import ctypes, os, signal, subprocess, sys, time
    assert ctypes.CDLL(None).prctl(36, 1, 0, 0, 0) == 0        # PR_SET_CHILD_SUBREAPER
    oci, root, bundle, log = sys.argv[1:5]
    def ukvm_oci(*args, **kw):
        subprocess.run([oci, "--root", root, *args], check=True, timeout=60, **kw)
    with open(log, "wb") as out:                                # the container's stdio
        ukvm_oci("create", "--bundle", bundle, "--pid-file", bundle + "/pid", "c1", stdout=out, stderr=out)
    pid = int(open(bundle + "/pid").read())
    ukvm_oci("kill", "c1", "SIGTERM")                           # before start: no handler yet
    ukvm_oci("start", "c1")
    deadline = time.monotonic() + 30
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        print("still running after 30 s")
    else:
        print("exit status", os.waitstatus_to_exitcode(done[1]))
    ukvm_oci("delete", "--force", "c1")
""")


def test_sigterm_before_the_tender_runs_ends_it(guest, tmp_path):
    oci = tmp_path / "ukvm-oci"
    subprocess.run([sys.executable, "-m", "ukvm", "oci", "launcher", str(oci)], check=True, timeout=60)
    bundle = tmp_path / "bundle"
    (bundle / "rootfs" / "unikernel").mkdir(parents=True)
    shutil.copy(guest("test_hostile", cpl0=False), bundle / "rootfs" / "unikernel" / "app.hvt")
    spec = {"ociVersion": "1.0.2", "root": {"path": "rootfs"},
            "process": {"args": ["/unikernel/app.hvt"], "cwd": "/"},
            "annotations": {ANNOTATION + "binary": "/unikernel/app.hvt", ANNOTATION + "hypervisor": "hvt",
                            ANNOTATION + "unikernelType": "solo5", ANNOTATION + "cmdline": "sleep"},
            "linux": {"namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "mount"}],
                      "cgroupsPath": "ukvm-test-signals/c1"}}
    (bundle / "config.json").write_text(json.dumps(spec))
    log = tmp_path / "log"
    p = subprocess.run([sys.executable, "-c", LIFECYCLE, str(oci), str(tmp_path / "state"), str(bundle), str(log)],
                       capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout == "exit status 1\n", (p.stdout, log.read_text())
    assert log.read_text().endswith("Exiting on signal 15\n"), log.read_text()
