"""cli/collector.py: the garbage collector back on once start-up is over (see ukvm/start.py,
which switches it off before importing the CLI)."""
import gc


def collect_from_now() -> None:
    """The collector back on, for what the run or command allocates from here; what start-up
    made is frozen, never scanned again."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()
