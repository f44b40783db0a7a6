"""The core (tables, migrations, scoping and identity, engine, data access) imports no tool.

Tools (the audit command, bench, stress, the test plugin, the demo, the CLI, the embedded
server) may import the core, never the other way round: an app that imports todo_rls to scope
its sessions must not pull in, or break with, the tools. Imports are read from the source (ast),
followed through every todo_rls module the core reaches, lazy imports inside functions included.
"""

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "todo_rls"

CORE = (
    "todo_rls",  # the package's __init__: what `import todo_rls` loads
    "todo_rls._psycopg_wire",
    "todo_rls.audit",
    "todo_rls.better_auth",
    "todo_rls.chat",
    "todo_rls.engine",
    "todo_rls.errors",
    "todo_rls.identity",
    "todo_rls.keys",
    "todo_rls.migrate",
    "todo_rls.models",
    "todo_rls.owned_rows",
    "todo_rls.owner_rls",
    "todo_rls.pagination",
    "todo_rls.preferences",
    "todo_rls.session",
    "todo_rls.settings",
    "todo_rls.tasks",
    "todo_rls.users_table",
    "todo_rls.validation",
)
TOOLS = (
    "todo_rls.bench",
    "todo_rls.check",
    "todo_rls.cli",
    "todo_rls.demo",
    "todo_rls.embedded",
    "todo_rls.keys_command",
    "todo_rls.stress",
    "todo_rls.testing",
)
# The migrations ship as todo_rls._migrations; they are core too.
MIGRATIONS = sorted((REPO / "migrations").rglob("*.py"))


def is_tool(module: str) -> bool:
    return any(module == tool or module.startswith(tool + ".") for tool in TOOLS)


def module_file(module: str) -> Path | None:
    """The source file of a todo_rls module, or None if it is not one of ours."""
    parts = module.split(".")
    if parts[0] != "todo_rls":
        return None
    base = PACKAGE.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module source imports (absolute names; `from x import y` gives x and x.y)."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def tool_imports(module: str, source: str, is_package: bool = False) -> dict[str, list[str]]:
    """{tool module: the import chain from module to it}, following todo_rls modules."""
    chains: dict[str, list[str]] = {}
    seen = {module}
    stack = [(module, source, is_package, [module])]
    while stack:
        name, text, package, chain = stack.pop()
        for imported in sorted(imported_modules(text, name, package)):
            if is_tool(imported):
                chains.setdefault(imported, [*chain, imported])
                continue
            path = module_file(imported)
            if path is None or imported in seen:
                continue
            seen.add(imported)
            stack.append(
                (imported, path.read_text(), path.name == "__init__.py", [*chain, imported])
            )
    return chains


@pytest.mark.parametrize("module", CORE)
def test_core_module_imports_no_tool(module: str) -> None:
    path = module_file(module)
    assert path is not None, f"{module}: no such module (update CORE)"
    chains = tool_imports(module, path.read_text(), path.name == "__init__.py")
    assert not chains, "core imports a tool: " + "; ".join(" -> ".join(c) for c in chains.values())


@pytest.mark.parametrize("path", MIGRATIONS, ids=[p.name for p in MIGRATIONS])
def test_migration_imports_no_tool(path: Path) -> None:
    chains = tool_imports("todo_rls._migrations.x", path.read_text())
    assert not chains, "migration imports a tool: " + "; ".join(
        " -> ".join(c) for c in chains.values()
    )


def test_every_module_is_core_or_tool() -> None:
    """A new module must be placed: a test cannot protect a layer it does not know of."""
    modules = {
        "todo_rls." + ".".join(p.relative_to(PACKAGE).with_suffix("").parts)
        for p in PACKAGE.glob("*.py")
        if p.name != "__init__.py"
    } | {"todo_rls." + p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    unplaced = {m for m in modules if m not in CORE and not is_tool(m)}
    # Shared by core and tools without being either's: allowed, and checked through the core.
    helpers = {"todo_rls.login_roles"}
    assert unplaced <= helpers, f"place these in CORE or TOOLS: {sorted(unplaced - helpers)}"


@pytest.mark.parametrize(
    ("source", "tool"),
    [
        ("from todo_rls.demo import BETTER_AUTH_USER_DDL", "todo_rls.demo"),
        ("import todo_rls.check.rules", "todo_rls.check.rules"),
        ("from todo_rls import testing", "todo_rls.testing"),
        ("from .bench import run", "todo_rls.bench"),
        ("def later():\n    from todo_rls.stress import run_stress", "todo_rls.stress"),
        # Through a core module that imports a tool: caught at the module that does.
        ("from todo_rls import cli", "todo_rls.cli"),
    ],
)
def test_the_check_fails_on_a_core_module_that_imports_a_tool(source: str, tool: str) -> None:
    assert tool in tool_imports("todo_rls.session", source)


def test_the_check_follows_imports_through_other_modules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A core module that imports a harmless-looking helper, which imports a tool lazily.
    (tmp_path / "helper.py").write_text("def f():\n    from todo_rls.demo import run_demo\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path)
    chains = tool_imports("todo_rls.session", "from todo_rls import helper")
    assert chains["todo_rls.demo"] == ["todo_rls.session", "todo_rls.helper", "todo_rls.demo"]
