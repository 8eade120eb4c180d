"""ukvm-oci's commands start lean (issue 20): `state`, `kill`, `delete`, `ps`, `start` and every
command handed to runc import neither the tender (machine, modules) nor json/re/enum/subprocess;
checked on the modules a command leaves loaded, in a fresh `-I -S` interpreter as the launcher
runs it (behaviour, not timing: docs/kubernetes.md has the figures)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[2] / "src")
HEAVY = ("json", "re", "enum", "subprocess", "ctypes", "socket", "signal", "datetime", "base64", "typing",
         "ukvm.machine", "ukvm.modules", "ukvm.sandbox", "ukvm.options", "ukvm.oci.create", "ukvm.oci.unikernel")
PROBE = """
import os, sys
sys.path.insert(0, {src!r})
def report(how):
    print(how)
    print(" ".join(sorted(sys.modules)))
    sys.exit(0)
os.execv = lambda *_: report("exec")   # runc's turn: what was loaded until then
from ukvm.oci.runtime import main
report(f"returned {{main(sys.argv[1:])}}")
"""


def loaded(*argv: str, outcome: str = "returned 0") -> set[str]:
    """The modules loaded when the command returned (its status must be 0) or exec'ed runc."""
    p = subprocess.run([os.path.realpath(sys.executable), "-I", "-S", "-c", PROBE.format(src=SRC), *argv],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    *_, how, mods = p.stdout.splitlines()
    assert how == outcome, (how, p.stderr)             # a command that failed at once loads little
    return set(mods.split())


def heavy(mods: set[str]) -> list[str]:
    return sorted(m for m in mods if any(m == h or m.startswith(h + ".") for h in HEAVY))


@pytest.fixture
def root(tmp_path):
    """A state directory with one running container (a sleeping child) and one stopped."""
    sys.path.insert(0, SRC)
    from ukvm.oci.state import Container, start_time
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        for cid, pid in (("running", sleeper.pid), ("stopped", 2 ** 22 + 1)):
            c = Container(str(tmp_path), cid)
            os.makedirs(c.dir)
            c.save({"id": cid, "pid": pid, "start_time": start_time(pid) or 0, "bundle": "/b", "rootfs": "/b/r",
                    "created": "2026-01-01T00:00:00Z", "annotations": {"a": "b"}})
        yield str(tmp_path)
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.parametrize("argv", [
    ["state", "running"], ["ps", "--format", "json", "running"], ["kill", "running", "0"],
    ["kill", "running", "SIGCONT"], ["delete", "stopped"],
    ["state", "runcs"], ["kill", "runcs", "SIGTERM"], ["delete", "--force", "runcs"], ["start", "runcs"],
])
def test_commands_load_nothing_heavy(root, argv):
    outcome = "exec" if "runcs" in argv else "returned 0"      # a container ukvm-oci does not know: runc's
    assert heavy(loaded("--root", root, "--log", os.path.join(root, "log"), "--log-format", "json", *argv,
                        outcome=outcome)) == []


def test_state_output_is_runcs_json(root, capfd):
    p = subprocess.run([os.path.realpath(sys.executable), "-I", "-S", "-c", PROBE.format(src=SRC), "--root", root,
                        "state", "running"], capture_output=True, text=True, timeout=60)
    state = json.loads(p.stdout[:p.stdout.rindex("}") + 1])
    assert state["status"] == "running" and state["id"] == "running" and state["annotations"] == {"a": "b"}


def test_the_launcher_runs_lean(tmp_path):
    """`ukvm oci launcher` writes an executable that runs this interpreter with -IS and this ukvm."""
    launcher = tmp_path / "ukvm-oci"
    subprocess.run([sys.executable, "-m", "ukvm", "oci", "launcher", str(launcher)], check=True, timeout=60)
    first = launcher.read_text().splitlines()[0]
    assert first == f"#!{os.path.realpath(sys.executable)} -IS"
    p = subprocess.run([str(launcher), "features"], capture_output=True, text=True, timeout=60,
                       env={"PATH": os.environ["PATH"], "PYTHONPATH": "/nonexistent"})
    assert p.returncode == 0 and json.loads(p.stdout)["ociVersionMax"], p.stderr


def test_a_launcher_path_that_cannot_be_written_is_one_line_and_leaves_nothing(tmp_path):
    target = tmp_path / "a-directory"
    target.mkdir()
    p = subprocess.run([sys.executable, "-m", "ukvm", "oci", "launcher", str(target)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and p.stderr == f"ukvm oci: {target}: Is a directory\n", p.stderr
    assert sorted(os.listdir(tmp_path)) == ["a-directory"] and not os.listdir(target)


@pytest.mark.parametrize("text", [
    ' {"a": [1, 2.5, -3e2, "x\\u00e9\\n", {"b" : null}] , "c":true, "d": false}\n', "[]", '"s"', "12",
    '{"n": NaN, "i": -Infinity}', '{"a": 1} x', '{"a" 1}', "", "[1,]", '{"a": "\x01"}'])
def test_parse_json_is_json_loads(text):
    sys.path.insert(0, SRC)
    from ukvm.oci.state import parse_json
    try:
        expected = json.loads(text)
    except ValueError as e:
        with pytest.raises(ValueError) as got:
            parse_json(text)
        assert str(got.value) == str(e)
        return
    got = parse_json(text)
    assert json.dumps(got) == json.dumps(expected)      # NaN compares unequal to itself


def test_parse_json_takes_a_containerd_spec():
    sys.path.insert(0, SRC)
    from ukvm.oci.state import parse_json
    text = subprocess.run(["ctr", "oci", "spec"], capture_output=True, text=True).stdout \
        if subprocess.run(["which", "ctr"], capture_output=True).returncode == 0 else json.dumps({"x": [1, {"y": 2}]})
    assert parse_json(text) == json.loads(text)


def test_the_pods_sandbox_goes_to_runc_lean(root, tmp_path):
    """`create` of the pause container: config.json says CRI sandbox, runc is exec'ed before the
    rootfs is looked at and without json or the tender."""
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps({"root": {"path": "rootfs"}, "annotations": {
        "io.kubernetes.cri.container-type": "sandbox"}}))
    mods = loaded("--root", root, "create", "--bundle", str(bundle), "--pid-file", str(tmp_path / "pid"), "pause1",
                  outcome="exec")
    assert "ukvm.oci.runtime" in mods and heavy(mods) == []
