"""The package's import graph: imports point down the data flow, never back, and never in a cycle.

Every `import ddim…` is counted, including those inside functions, so a cycle cannot hide behind
a deferred import.
"""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "ddim"

# The layers, bottom first: a module may import its own unit and lower layers only.
LAYERS = {
    "errors": 0,
    "version": 0,
    "scalars": 1,
    "files": 1,
    "device": 1,
    "progress": 1,
    "hub": 2,
    "diffusion": 2,
    "config": 3,
    "network": 4,
    "data": 4,
    "images": 5,
    "checkpoint": 5,
    "sampling": 6,
    "evaluation": 6,
    "training": 7,
    "experiments": 8,
    "cli": 9,
    "__init__": 10,
    "__main__": 10,
}


def module_name(path: Path) -> str:
    """ddim.a.b for src/ddim/a/b.py (packages by their __init__)."""
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The ddim modules a file imports, anywhere in it (a `from pkg import mod` names mod)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & modules
            found |= submodules or {node.module}
    return {name for name in found if name in modules}


def graph() -> dict[str, set[str]]:
    """Module -> the ddim modules it imports."""
    files = {module_name(p): p for p in SRC.rglob("*.py")}
    return {name: imports_of(path, set(files)) - {name} for name, path in files.items()}


def unit(module: str) -> str:
    """The top-level unit of a module: ddim.diffusion.samplers -> diffusion, ddim -> __init__."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_unit_has_a_layer():
    assert {unit(m) for m in graph()} <= set(LAYERS)


def test_imports_point_down_the_layers():
    wrong = [
        f"{a} imports {b}"
        for a, targets in graph().items()
        for b in targets
        if unit(a) != unit(b) and LAYERS[unit(b)] >= LAYERS[unit(a)]
    ]
    assert not wrong, wrong


def test_no_import_cycles():
    edges = graph()
    # Tarjan's strongly connected components: any component of more than one module is a cycle.
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_a_cycle_would_be_found(monkeypatch):
    """The cycle check itself fails on a graph with a cycle."""
    fake = {"ddim.a": {"ddim.b"}, "ddim.b": {"ddim.a"}}
    monkeypatch.setattr(__import__(__name__), "graph", lambda: fake)
    with pytest.raises(AssertionError):
        test_no_import_cycles()


def test_commands_share_code_only_through_the_common_module():
    commands = {m for m in graph() if unit(m) == "cli" and m.count(".") == 2}
    for name in commands:
        others = {b for b in graph()[name] if b in commands and not b.endswith("._common")}
        assert not others, f"{name} imports {others}"


# The commands that run the paper's experiments, the demo and the benchmarks; encoding,
# interpolation and trajectories are sampling, and their runners are the sampling stage's.
RUN_EXPERIMENTS = {"table", "reconstruct", "demo", "bench"}


def test_only_the_experiment_commands_import_experiments():
    commands = {m for m in graph() if unit(m) == "cli" and m.count(".") == 2}
    leaning = {
        name.split(".")[-1]
        for name in commands
        if any(unit(b) == "experiments" for b in graph()[name])
    }
    assert leaning <= RUN_EXPERIMENTS, leaning - RUN_EXPERIMENTS
    assert {"sample", "encode", "interpolate", "trajectory"} <= {c.split(".")[-1] for c in commands}


def test_the_diffusion_math_reads_no_files_and_holds_no_devices():
    for path in (SRC / "diffusion").glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not names & {"os", "pathlib", "io", "json", "safetensors", "PIL"}, path.name
        assert "open(" not in path.read_text(encoding="utf-8"), path.name
