"""`ukvm run` imports only what a run needs (docs/performance.md, cold start): none of the
standard library's heavier modules, none of the toolchain, and no module the command line and
the manifest do not use. Each of these once crept onto the start-up path and cost 1-5 ms."""
import subprocess
import sys

from conftest import ROOT, needs_kvm

HEAVY = {"re", "typing", "json", "socket", "selectors", "collections", "enum", "hashlib", "math",
         "threading", "dataclasses", "subprocess", "tempfile"}


def imported_by_run(*args) -> list[str]:
    p = subprocess.run([sys.executable, "-I", "-S", "-X", "importtime", ROOT / "bin" / "ukvm-hvt", *map(str, args)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return [line.rsplit("|", 1)[1].strip() for line in p.stderr.splitlines() if line.startswith("import time:")
            and "imported package" not in line]


@needs_kvm
def test_a_hello_run_imports_no_heavy_module_and_no_unused_ukvm_module(guest):
    mods = imported_by_run("--mem=8", guest("test_hello", cpl0=False), "Hi")
    assert "ukvm.machine.vm" in mods                      # the list is the run's
    assert not HEAVY.intersection(mods), sorted(HEAVY.intersection(mods))
    assert not [m for m in mods if m.startswith("ukvm.toolchain")]
    unused = {"ukvm.modules.block", "ukvm.modules.net", "ukvm.modules.gdb", "ukvm.modules.dumpcore",
              "ukvm.modules.profile", "ukvm.modules.trace", "ukvm.serve", "ukvm.oci"}
    assert not unused.intersection(mods), sorted(unused.intersection(mods))


@needs_kvm
def test_an_option_imports_its_module(guest, tmp_path):
    mods = imported_by_run("--mem=8", f"--trace={tmp_path / 'trace.jsonl'}", guest("test_hello", cpl0=False), "Hi")
    assert "ukvm.modules.trace" in mods and "ukvm.modules.block" not in mods
