"""The shape of the code: the import graph of cci_local has no cycle, counting the
imports inside functions too (a lazy import still ties two modules together); and
docs/schema.sql is the schema a fresh store gets from cci_local/migrations.py.

    python tests/test_architecture.py            # print the import graph's cycles
    python tests/test_architecture.py --schema   # rewrite docs/schema.sql"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "cci_local"
SCHEMA_DOC = ROOT / "docs" / "schema.sql"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the cci_local modules it imports (at the top or inside functions)."""
    files = {module_name(p): p for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[:len(base) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                # `from pkg import submodule` is an edge to the submodule
                subs = [f"{source}.{a.name}" for a in node.names if f"{source}.{a.name}" in files]
                targets = subs if len(subs) == len(node.names) else [source, *subs]
            for target in targets:
                while target and target not in files:
                    target = target.rpartition(".")[0]  # a name inside a module
                if target and target != name and target.startswith("cci_local"):
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def package_parents(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Edges from a module to its own parent packages are how Python packages work
    (``from . import x`` inside the package, a package re-exporting its modules): left
    out, as long as the package does not import the module back through others."""
    return {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}


def test_the_import_graph_has_no_cycle():
    found = cycles(package_parents(import_graph()))
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_checker_finds_a_cycle(tmp_path):
    package = tmp_path / "cci_local"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from .sub import b\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "b.py").write_text("def f():\n    from ..a import g\n")
    global PACKAGE
    saved, PACKAGE = PACKAGE, package
    try:
        found = cycles(package_parents(import_graph(package)))
    finally:
        PACKAGE = saved
    assert found == [["cci_local.a", "cci_local.sub.b"]]


# Each stage's entry module (and the modules around the pipeline): every public function
# says what it does.
DOCUMENTED = ["ingest/__init__.py", "topics.py", "generate/__init__.py", "generate/cross.py",
              "generate/templates.py", "train/__init__.py", "evaluate/survey.py",
              "evaluate/psychometrics.py", "evaluate/fidelity.py", "report.py", "pipeline.py",
              "export.py", "collect.py", "ask.py", "chat.py", "respondents.py", "store.py",
              "data.py"]


def test_public_functions_of_the_stage_modules_have_docstrings():
    missing = []
    for name in DOCUMENTED:
        tree = ast.parse((PACKAGE / name).read_text(encoding="utf-8"))
        missing += [f"cci_local/{name}: {node.name}()" for node in tree.body
                    if isinstance(node, ast.FunctionDef) and not node.name.startswith("_")
                    and not ast.get_docstring(node)]
    assert not missing, "public functions without a docstring: " + ", ".join(missing)


def schema_snapshot(path: Path) -> str:
    """The schema of a fresh store at ``path``: every table, index and trigger, as SQL."""
    from cci_local.store import SCHEMA_VERSION, open_store

    db = open_store(path)
    rows = db.execute("SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL"
                      " AND name NOT LIKE 'sqlite_%' ORDER BY type DESC, name").fetchall()
    head = (f"-- The store's schema, version {SCHEMA_VERSION}, as a fresh store gets it from\n"
            "-- cci_local/migrations.py.  Written by `python tests/test_architecture.py"
            " --schema`;\n-- tests/test_architecture.py fails when it no longer matches.\n")
    return head + "".join(f"\n{sql};\n" for _, _, sql in rows)


def test_the_schema_snapshot_matches_a_fresh_store(tmp_path):
    fresh = schema_snapshot(tmp_path / "fresh.db")
    assert SCHEMA_DOC.is_file(), "docs/schema.sql is missing: python tests/test_architecture.py" \
        " --schema"
    assert SCHEMA_DOC.read_text(encoding="utf-8") == fresh, (
        "docs/schema.sql is not the schema store.py makes: rewrite it with "
        "`python tests/test_architecture.py --schema` and describe the change in "
        "docs/data-model.md")


if __name__ == "__main__":
    if "--schema" in sys.argv:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            SCHEMA_DOC.parent.mkdir(exist_ok=True)
            SCHEMA_DOC.write_text(schema_snapshot(Path(tmp) / "fresh.db"), encoding="utf-8")
        print(f"wrote {SCHEMA_DOC}")
    for cycle in cycles(package_parents(import_graph())):
        print(" <-> ".join(cycle))


def test_every_command_takes_exactly_the_options_it_declares():
    # A decorator applied to the wrong command shows only when that command runs
    # (`collect` once got run's --survey-questions): check every callback here.
    import inspect

    import click

    from cci_local.cli import cli

    def commands(group):
        for command in group.commands.values():
            if isinstance(command, click.Group):
                yield from commands(command)
            else:
                yield command

    for command in commands(cli):
        declared = {p.name for p in command.params}
        taken = set(inspect.signature(command.callback).parameters) - {"obj", "ctx"}
        assert declared == taken, (command.name, declared ^ taken)
