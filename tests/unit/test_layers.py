"""The layering contract: each package imports only from its own layer or the layers below it,
and the packages of one layer import each other without cycles. Imports inside functions count
too: a lazy back-import is still a back-import.

Layers, lowest first (a package is named by its module prefix):

    core         overlay.core                      errors, wire helpers, metrics, identity, records
    transport    overlay.transport                 the py-libp2p host, the dialer
    protocols    overlay.kademlia, overlay.channels, overlay.messagenet, overlay.peermsg,
                 overlay.gateway, signaling, nat
    node         overlay.node                      the node's assembly, config, the local API
    simulations  simulations                       drives the cores in virtual time; natlab
    cli          overlay.cli                       `overlay-node`: runs a node, asks one, simulates

The CLI is on top rather than below the simulations: `overlay-node simulate` and `natlab` are
its commands, and the simulator imports nothing of the node's adapters or of the CLI.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("core", ("overlay.core", "overlay")),
    ("transport", ("overlay.transport",)),
    ("protocols", ("overlay.kademlia", "overlay.channels", "overlay.messagenet", "overlay.peermsg", "overlay.gateway",
                   "signaling", "nat")),
    ("node", ("overlay.node",)),
    ("simulations", ("simulations",)),
    ("cli", ("overlay.cli",)),
]
TOP_PACKAGES = ("overlay", "signaling", "nat", "simulations")


def package_of(module: str) -> tuple[int, str]:
    """(layer index, package) of a project module: the longest listed prefix it falls under."""
    best: tuple[int, str] | None = None
    for rank, (_, packages) in enumerate(LAYERS):
        for package in packages:
            if (module == package or module.startswith(package + ".")) and (best is None or len(package) > len(best[1])):
                best = (rank, package)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add its package to LAYERS")
    return best


def imports(root: Path) -> Iterable[tuple[str, str, int]]:
    """(importing module, imported module, line) for every project import under `root`."""
    for top in TOP_PACKAGES:
        for path in sorted((root / top).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                elif isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                else:
                    continue
                for name in names:
                    if name.split(".")[0] in TOP_PACKAGES:
                        yield module, name, node.lineno


def violations(root: Path) -> list[str]:
    """Every import that reaches up a layer, and every cycle between packages of one layer."""
    found, edges = [], {}
    for module, imported, line in imports(root):
        (rank, package), (target_rank, target) = package_of(module), package_of(imported)
        if target_rank > rank:
            found.append(f"{module}:{line} imports {imported}: {LAYERS[rank][0]} may not import {LAYERS[target_rank][0]}")
        elif package != target:
            edges.setdefault(package, set()).add(target)
    found.sort()
    found += [f"import cycle between packages: {' -> '.join(cycle)}" for cycle in _cycles(edges)]
    return found


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    cycles, done = [], set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            cycles.append(path[path.index(node):] + [node])
            return
        if node in done:
            return
        for nxt in sorted(edges.get(node, ())):
            visit(nxt, path + [node])
        done.add(node)

    for start in sorted(edges):
        visit(start, [])
    return cycles


def test_the_tree_keeps_its_layers():
    assert violations(ROOT) == []


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for top in TOP_PACKAGES:
        (tmp_path / top).mkdir(exist_ok=True)
    return tmp_path


def test_a_back_import_fails_the_check_even_inside_a_function(tmp_path):
    root = _tree(tmp_path, {
        "overlay/core/errors.py": "def late():\n    from overlay.node.node import Node\n",
        "overlay/node/node.py": "from overlay.core.errors import late\n",
        "nat/relay.py": "import simulations.network\n",
    })
    assert violations(root) == [
        "nat.relay:1 imports simulations.network: protocols may not import simulations",
        "overlay.core.errors:2 imports overlay.node.node: core may not import node",
    ]
    (root / "overlay/core/errors.py").write_text("import overlay.core.metrics\n")
    (root / "nat/relay.py").write_text("from overlay.transport.dialer import Dialer\n")
    assert violations(root) == []


def test_a_cycle_between_packages_of_one_layer_fails_the_check(tmp_path):
    root = _tree(tmp_path, {"nat/relay.py": "from signaling import server\n", "signaling/server.py": "import nat.relay\n"})
    assert violations(root) == ["import cycle between packages: nat -> signaling -> nat"]
