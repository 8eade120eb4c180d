"""units.py: --mem's parser with the message solo5-hvt gives, for serve's configuration until it
reads its command line with the options layer (ukvm.options, where the parser lives).

At the bottom of the tree: imports only errors and options.
"""
from ukvm.errors import UsageError
from ukvm.options import MEM, BadValue, parse_mem as _parse_mem


def parse_mem(value: str) -> int:
    """--mem=N: N MiB as bytes (ukvm.options.parse_mem); UsageError if malformed."""
    try:
        return _parse_mem(value)
    except BadValue as bad:
        raise MEM.error(value, bad, "hvt") from None
