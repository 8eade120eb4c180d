"""`ukvm run --profile` (issue 21): a guest that spends twice as long in spin_long() as in
spin_short() shows both in its profile with about those shares, built by `ukvm build` and by
Solo5's toolchain, with its code at CPL3 (the runtime's drop, the supervisor) and at CPL0, under
the sandbox; the folded stacks parse and the SVG is well-formed XML."""
import xml.etree.ElementTree as ET

import pytest

import solo5_sdk
from conftest import GUESTS, needs_kvm, run_hvt, ukvm

pytestmark = needs_kvm
FP = "-fno-omit-frame-pointer"


@pytest.fixture(scope="module")
def ukvm_built(tmp_path_factory):
    out = tmp_path_factory.mktemp("prof") / "test_profile.hvt"
    p = ukvm("build", GUESTS / "test_profile.c", "-o", out, f"--cflags={FP}", timeout=120)
    assert p.returncode == 0, p.stdout.decode()
    return out


@pytest.fixture(scope="module")
def solo5_built(tmp_path_factory):
    if not solo5_sdk.available():
        pytest.skip(solo5_sdk.MISSING)
    out = tmp_path_factory.mktemp("prof") / "test_profile_sdk.hvt"
    return solo5_sdk.build(GUESTS / "test_profile.c", out, cflags=("-O2", FP, f"-I{GUESTS}"))


def parse_folded(text: str) -> dict[tuple[str, ...], int]:
    stacks = {}
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        assert stack and count.isdigit(), line
        stacks[tuple(stack.split(";"))] = int(count)
    return stacks


def profile(tmp_path, kernel, cpl, ms):
    out = tmp_path / "prof.folded"
    p = run_hvt("--mem=32", f"--x-guest-cpl={cpl}", f"--profile={out}", kernel, str(ms))
    assert p.returncode == 0 and "SUCCESS" in p.output, p.output
    assert f"samples written to {out} and {out}.svg" in p.output
    stacks = parse_folded(out.read_text())
    svg = ET.parse(f"{out}.svg").getroot()                      # well-formed, or this raises
    assert svg.tag == "{http://www.w3.org/2000/svg}svg"
    titles = [t.text for t in svg.iter("{http://www.w3.org/2000/svg}title")]
    return stacks, titles


def shares(stacks):
    in_fn = {fn: sum(n for s, n in stacks.items() if fn in s) for fn in ("spin_long", "spin_short")}
    return in_fn["spin_long"], in_fn["spin_short"], sum(stacks.values())


def check_two_to_one(stacks, titles):
    long_, short, total = shares(stacks)
    assert long_ and short, stacks
    assert (long_ + short) >= 0.8 * total, stacks     # the guest does little else
    assert 0.5 <= long_ / (long_ + short) <= 0.8, stacks     # 2/3 expected
    # Whole stacks from the frame pointers: the spinning frames sit under solo5_app_main.
    assert any(s[-3:] == ("solo5_app_main", "spin_long", "spin_until") for s in stacks), stacks
    assert any(t.startswith("spin_long (") for t in titles) and any(t.startswith("all (") for t in titles)


@pytest.mark.parametrize("cpl", ["3", "0"])
def test_profile_ukvm_built(tmp_path, ukvm_built, cpl):
    # CPL0 on kvm_pvm is emulated: a shorter run gives enough samples.
    check_two_to_one(*profile(tmp_path, ukvm_built, cpl, 900 if cpl == "3" else 450))


@pytest.mark.parametrize("cpl", ["3", "0"])
def test_profile_solo5_built(tmp_path, solo5_built, cpl):
    check_two_to_one(*profile(tmp_path, solo5_built, cpl, 900 if cpl == "3" else 450))


def test_profile_names_the_tender_when_it_is_busy(tmp_path):
    """A guest that sleeps in POLL: the samples' leaf is the tender's POLL handler."""
    if not solo5_sdk.available():
        pytest.skip(solo5_sdk.MISSING)
    stacks, _ = profile_plain(tmp_path, solo5_sdk.UPSTREAM / "tests" / "test_time.hvt")
    polled = sum(n for s, n in stacks.items() if s[-1] == "[ukvm] hvt_hc_poll")
    assert polled >= 0.5 * sum(stacks.values()), stacks


def profile_plain(tmp_path, kernel):
    out = tmp_path / "p"
    p = run_hvt("--mem=32", f"--profile={out}", kernel)
    assert p.returncode == 0, p.output
    return parse_folded(out.read_text()), None


def test_profile_bad_rate_is_one_line(ukvm_built):
    p = run_hvt("--profile=/dev/null", "--profile-rate=0", ukvm_built)
    assert p.returncode == 1 and "Malformed argument to --profile-rate" in p.output and "Traceback" not in p.output
