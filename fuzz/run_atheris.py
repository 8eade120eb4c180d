#!/usr/bin/env python3
"""run_atheris.py TARGET [libFuzzer options]: coverage-guided fuzzing of one target of
fuzz/targets.py with atheris (pip install atheris). The documented long run, per target:

    python3 fuzz/seeds.py /tmp/corpus
    python3 fuzz/run_atheris.py elf -max_total_time=100 /tmp/corpus/elf

Any exception other than UkvmError is a crash: atheris prints it and saves the input."""
import sys

import atheris

with atheris.instrument_imports():
    import targets

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in targets.TARGETS:
        sys.exit(f"usage: run_atheris.py {{{'|'.join(targets.TARGETS)}}} [libFuzzer options]")
    target = targets.TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0]] + sys.argv[2:], target)
    atheris.Fuzz()
