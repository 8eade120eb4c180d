"""The tree's layers (docs/architecture.md): what each package of src/ukvm may import, checked on
every `import` in the sources (at the top or inside a function), so a package docstring that says
what it may import stays true."""
import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "ukvm"
BOTTOM = {"__version__", "errors", "hvt_abi", "options"}    # and ukvm itself (its __init__)
FRONT_ENDS = {"cli", "serve", "oci", "start", "__main__"}

# package (first component under ukvm) -> what it may import besides itself and BOTTOM; a name
# with a dot allows that module (and below) only.
ALLOWED = {
    "__init__": set(), "errors": set(), "hvt_abi": set(), "options": set(),
    "kvm": set(),
    "machine": {"kvm", "modules", "sandbox.needs"},
    "modules": {"kvm", "machine.memory", "machine.manifest", "machine.vcpu", "machine.supervisor",
                "machine.signals", "sandbox.needs"},
    "sandbox": {"kvm", "machine.snapshot"},
    "toolchain": {"machine.manifest", "machine.elf", "machine.supervisor"},
    "serve": {"machine", "modules", "sandbox"},
    "oci": {"machine"},
    "cli": {"kvm", "machine", "modules", "sandbox", "toolchain", "serve", "oci"},
    "start": {"cli"},
    "__main__": {"start"},
}


def imports_of(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from ukvm.machine import supervisor` imports ukvm.machine.supervisor, not all of
            # ukvm.machine; a name that is no module file is the package's own.
            where = SRC.parent.joinpath(*node.module.split("."))
            is_module = [(where / f"{a.name}.py").exists() or (where / a.name).is_dir() for a in node.names]
            names = [f"{node.module}.{a.name}" for a, sub in zip(node.names, is_module)
                     if sub or node.module == "ukvm"]
            if not all(is_module) and node.module != "ukvm":
                names.append(node.module)
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            if name == "ukvm" or name.startswith("ukvm."):
                yield node.lineno, name.split(".")[1:]


def allowed(package: str, target: list[str]) -> bool:
    if not target or target[0] == package or target[0] in BOTTOM:
        return True
    rules = ALLOWED[package]
    return any(target[:len(rule.split("."))] == rule.split(".") for rule in rules)


def test_every_import_follows_the_layers():
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        package = path.relative_to(SRC).with_suffix("").parts[0]
        assert package in ALLOWED, f"{path}: a package docs/architecture.md and this test do not know"
        for line, target in imports_of(path):
            if target and target[0] not in ALLOWED and target[0] not in BOTTOM:
                bad.append(f"{path}:{line} imports unknown ukvm.{'.'.join(target)}")
            elif not allowed(package, target):
                bad.append(f"{path.relative_to(SRC)}:{line}: {package} may not import ukvm.{'.'.join(target)}")
    assert not bad, "\n".join(bad)


def test_nothing_below_imports_a_front_end():
    for package, rules in ALLOWED.items():
        if package not in FRONT_ENDS:
            assert not {r.split(".")[0] for r in rules} & FRONT_ENDS, package


def test_the_rule_table_catches_an_upward_import():
    assert not allowed("machine", ["serve", "server"])
    assert not allowed("modules", ["machine", "vm"])
    assert not allowed("options", ["machine"])
    assert allowed("modules", ["machine", "memory"]) and allowed("cli", ["serve"])
