"""start.py: the commands' entry points (console scripts, bin/ukvm-hvt, python3 -m ukvm).

Starting a tender allocates only objects that live as long as it does (modules, classes, the VM),
yet the garbage collector walks them all a few times on the way: ~0.8 ms of every cold start
here (docs/performance.md). So the collector is off until the guest is about to run or another
command starts (ukvm.cli.collector.collect_from_now); what was made until then is frozen, never
scanned again. Above the front ends: imports ukvm.cli only once the collector is off, and
nothing imports this module but the entry points."""
import gc


def main() -> int:
    gc.disable()
    from ukvm.cli import main as cli_main
    return cli_main()


def hvt_main() -> int:
    gc.disable()
    from ukvm.cli import hvt_main as cli_hvt_main
    return cli_hvt_main()
