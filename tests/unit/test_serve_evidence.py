"""serve's evidence options (issue 21): the per-minute bound of cores and the command-line rows."""
import pytest

from ukvm.errors import UsageError
from ukvm.modules.dumpcore import PerMinute
from ukvm.serve.config import ServeConfig

BASE = ["--listen=127.0.0.1:8080", "--guest=10.0.0.2:80"]


def test_per_minute_bound():
    bound = PerMinute(2)
    assert bound.take(_now=100.0) and bound.take(_now=110.0)
    assert not bound.take(_now=159.9)              # two in the last minute already
    assert bound.take(_now=160.0)                  # the first one is a minute old
    assert not bound.take(_now=169.9)
    assert bound.take(_now=230.0)


def test_serve_options():
    cfg = ServeConfig.from_argv(BASE + ["--dumpcore=/tmp/c", "--dumpcore-per-minute=3", "--trace=/tmp/t",
                                        "--trace-every=7", "app.hvt"])
    assert (cfg.dumpcore, cfg.dumpcore_per_minute, cfg.trace, cfg.trace_every) == ("/tmp/c", 3, "/tmp/t", 7)
    plain = ServeConfig.from_argv(BASE + ["app.hvt"])
    assert (plain.dumpcore, plain.dumpcore_per_minute, plain.trace, plain.trace_every) == (None, 10, None, 100)


@pytest.mark.parametrize("arg", ["--trace-every=0", "--dumpcore-per-minute=0", "--trace-every=x"])
def test_bad_values_are_usage_errors(arg):
    with pytest.raises(UsageError):
        ServeConfig.from_argv(BASE + [arg, "app.hvt"])
