"""The package's shape, checked: each layer imports only from layers below it, no cycles,
and only the kernel package talks to nftables or netlink."""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.policytools import REPO

PACKAGE = REPO / "op25b_ctl"


def readme_order() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(base modules, packages bottom to top) as the README writes them, once:
    "**Import order, written once**: `errors`, `fileio` < `policy/` < ... < `cli/`."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    line = text.split("**Import order, written once**:", 1)[1].split(".\n", 1)[0]
    names = re.findall(r"`([a-z_]+/?)`", line)
    return (
        tuple(n for n in names if not n.endswith("/")),
        tuple(n.rstrip("/") for n in names if n.endswith("/")),
    )


BASE, LAYERS = readme_order()
# What only the real kernel may import, and the modules allowed to: the fake (memory.py),
# the protocol (base.py) and everything above the kernel package never do.
KERNEL_PRIVATE = {
    "op25b_ctl.kernel.netlink": ("op25b_ctl.kernel.nft",),
    "op25b_ctl.kernel.nlbatch": ("op25b_ctl.kernel.nft",),
    "op25b_ctl.kernel.nlcodec": (
        "op25b_ctl.kernel.netlink",
        "op25b_ctl.kernel.nft",
        "op25b_ctl.kernel.nlbatch",  # the writer shares its constants and attribute packing
        "op25b_ctl.kernel.discovery",  # the rtnetlink reads share its request loop
    ),
    "pyroute2": ("op25b_ctl.kernel.netlink",),
    "nftables": ("op25b_ctl.kernel.nft",),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> Iterator[str]:
    """Every module `path` imports, at any depth (function-local imports count too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module_name(path) if path.name == "__init__.py" else module_name(path.parent)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing package
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


@functools.cache
def graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports. A module's own parent packages are left
    out: Python initialises them before it, so `from op25b_ctl.cli import ops` is no cycle."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {
        name: {
            m for m in imports(path) if m in modules and m != name and not name.startswith(m + ".")
        }
        for name, path in modules.items()
    }


def layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) < 2 or parts[1] in BASE:
        return -1  # op25b_ctl itself, errors, fileio: below every package
    return LAYERS.index(parts[1])


def test_the_readme_names_every_package_and_base_module() -> None:
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    modules = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert LAYERS and set(LAYERS) == packages
    assert set(BASE) == modules


@pytest.mark.parametrize("module", sorted(graph()))
def test_imports_go_only_downwards(module: str) -> None:
    upward = [m for m in graph()[module] if layer(m) > layer(module)]
    assert upward == [], f"{module} imports from a layer above it: {upward}"


def test_no_import_cycles() -> None:
    g = graph()
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            raise AssertionError("import cycle: " + " -> ".join([*path[path.index(node) :], node]))
        if node in done:
            return
        for nxt in sorted(g[node]):
            visit(nxt, [*path, node])
        done.add(node)

    for node in sorted(g):
        visit(node, [])


def test_only_the_kernel_package_reaches_nftables_and_netlink() -> None:
    offenders = []
    for root in (PACKAGE, REPO / "op25b_lab", REPO / "bench"):
        for path in root.rglob("*.py"):
            me = module_name(path)
            for target in set(imports(path)):
                for private, allowed in KERNEL_PRIVATE.items():
                    hit = target == private or target.startswith(private + ".")
                    if hit and me not in allowed and me != private:
                        offenders.append(f"{me} imports {target}")
    assert offenders == []


def test_the_metrics_collector_knows_nothing_of_the_reconciler() -> None:
    assert "op25b_ctl.daemon.reconcile" not in graph()["op25b_ctl.daemon.metrics"]


def test_no_isinstance_on_a_kernel() -> None:
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance":
                text = ast.unparse(node)
                if "Kernel" in text or "Backend" in text:
                    found.append(f"{module_name(path)}: {text}")
    assert found == []


def test_unit_tests_cannot_reach_the_host_kernel() -> None:
    from op25b_ctl.kernel.nft import NftKernel
    from op25b_ctl.plan.transaction import AddCounter, AddTable, Transaction

    kernel = NftKernel()
    with pytest.raises(AssertionError, match="must not reach the host kernel"):
        kernel.generation()
    with pytest.raises(AssertionError, match="must not reach the host kernel"):
        kernel.counters("inet", "op25b")
    with pytest.raises(ImportError):  # libnftables
        kernel.apply(Transaction("inet", "op25b", (AddCounter("x"),)))
    with pytest.raises(AssertionError, match="must not reach the host kernel"):  # nlbatch
        kernel.apply(Transaction("inet", "op25b", (AddTable("x"),)))


def test_every_exception_is_in_the_one_tree() -> None:
    """Exceptions are defined in errors.py only, each an Op25bError named in its docstring."""
    from op25b_ctl import errors

    elsewhere = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and any(
                ast.unparse(b).endswith(("Error", "Exception")) for b in node.bases
            ):
                elsewhere.append(f"{module_name(path)}.{node.name}")
    assert elsewhere == []
    tree = errors.__doc__ or ""
    for name in errors.__all__:
        cls = getattr(errors, name)
        if name != "Problem":
            assert issubclass(cls, errors.Op25bError) and name in tree, name


def test_no_one_imports_a_private_name_of_another_package() -> None:
    """bench/ shares the lab's namespace helpers through their public names only (unit tests
    may test a module's internals; shipped and tool code may not lean on them)."""
    found = []
    for root in (REPO / "bench", REPO / "op25b_lab", PACKAGE):
        for path in root.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    mine = module_name(path).split(".")[0]
                    theirs = node.module.split(".")[0]
                    private = [a.name for a in node.names if a.name.startswith("_")]
                    if private and theirs != mine:
                        found.append(f"{module_name(path)}: {node.module} {private}")
    assert found == []


def test_the_readme_module_map_lists_every_module() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    missing = [
        str(path.relative_to(PACKAGE))
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "__init__.py" and f"`{path.relative_to(PACKAGE)}`" not in text
    ]
    assert missing == [], "add these to the README's module map"


def test_commands_do_not_import_pyroute2() -> None:
    """pyroute2's import alone was a large part of every one-shot command's time
    (docs/performance.md): the CLI and the kernel seam read netlink through nlcodec."""
    import subprocess
    import sys

    code = (
        "import sys, op25b_ctl.cli.main, op25b_ctl.kernel.nft, op25b_ctl.daemon.loop; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pyroute2'))"
    )
    cp = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert cp.stdout.strip() == "[]"
