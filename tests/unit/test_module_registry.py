"""modules.REGISTRY (which module a run imports for which option or device) agrees with the
module classes, and modules_for picks exactly the modules a command line and manifest use."""
import pytest

from ukvm.machine.manifest import MFT_DEV_BLOCK_BASIC, MFT_DEV_NET_BASIC, MFT_RESERVED_FIRST, Entry, Manifest
from ukvm.modules import REGISTRY, module_classes, modules_for


def manifest(*types):
    return Manifest([Entry(0, "", MFT_RESERVED_FIRST, 0, 0)] +
                    [Entry(i + 1, f"dev{i}", t, 0, 0) for i, t in enumerate(types)])


def test_registry_names_every_class_its_options_and_order():
    classes = module_classes()
    assert [cls_name for _, cls_name, _, _ in REGISTRY] == [cls.__name__ for cls in classes]
    for (path, _, option_names, _), cls in zip(REGISTRY, classes):
        assert cls.__module__ == path
        assert set(option_names) == {opt.name for opt in cls.options}


def names(mods):
    return [m.name for m in mods]


@pytest.mark.parametrize("options, types, expected", [
    ([], (), ["core"]),
    (["--mem=8", "--x-guest-cpl=3"], (), ["core"]),
    (["--trace=-"], (), ["core", "trace"]),
    (["--gdb-port=0"], (), ["core", "gdb"]),
    (["--block:dev0=/tmp/x"], (), ["core", "block"]),
    ([], (MFT_DEV_BLOCK_BASIC,), ["core", "block"]),
    (["--net-mac:dev0=02:00:00:00:00:01"], (MFT_DEV_NET_BASIC,), ["core", "net"]),
    (["--profile=f", "--dumpcore=d", "--net:dev0=tap0"], (MFT_DEV_NET_BASIC, MFT_DEV_BLOCK_BASIC),
     ["core", "block", "net", "dumpcore", "profile"]),
])
def test_modules_for_picks_what_options_and_manifest_use(options, types, expected):
    assert names(modules_for(manifest(*types), options)) == expected


def test_options_are_refused_as_with_every_module():
    # An option of no module is no module's: the run refuses it (cli's parse_options).
    mods = modules_for(manifest(), ["--nosuch=1"])
    assert names(mods) == ["core"] and not any(m.handle_arg("--nosuch=1") for m in mods)
