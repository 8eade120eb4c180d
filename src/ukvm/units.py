"""units.py: parsing of option values shared by the front ends (cli, serve).

At the bottom of the tree: imports only errors, so a front end can use it without importing
another front end.
"""
from ukvm.errors import UsageError


def parse_mem(value: str) -> int:
    """--mem=N: N in MiB, parsed like C `%zd` (trailing garbage ignored), wrapped to 64 bits."""
    text = value.lstrip(" \t\n\v\f\r")
    sign = text[:1] if text[:1] in "+-" else ""
    digits = text[len(sign):]
    digits = digits[:len(digits) - len(digits.lstrip("0123456789"))]
    size = (int(sign + digits) << 20) % (1 << 64) if digits else 0
    if size == 0:
        raise UsageError("Malformed argument to --mem", show_usage=False)
    return size
