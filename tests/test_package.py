"""busmon as a Python package: one import name, a light ``import busmon``, imports one way.

The wheel is built from a copy of the source and installed into a folder of its own, then used
from a directory that is not the checkout, as a user's environment would use it: nothing named
``bus``, ``probes`` or ``tui`` may be importable from it, and a project with packages of its own
by those names runs its tests under ``pytest --busmon`` with both working.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import busmon

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]
#: the folders that become the busmon package, and what the wheel needs beside them
SOURCES = ("busmon", "bus", "probes", "tui")
PARTS = ("bus", "probes", "tui")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A non-editable install of busmon (``pip install --target``), built from a copy of the source
    so the checkout gets no build/ or egg-info; its dependencies come from this environment."""
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    src.mkdir()
    for name in SOURCES:
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    wheels = work / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheels), str(src)], check=True, capture_output=True, timeout=300)
    target = work / "site"
    (wheel,) = wheels.glob("busmon-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                    str(wheel)], check=True, capture_output=True, timeout=300)
    return target


def run_installed(installed: Path, cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(installed)}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def test_the_wheel_installs_one_top_level_package(installed: Path) -> None:
    tops = {p.name for p in installed.iterdir() if not p.name.endswith(".dist-info")} - {"bin"}
    assert tops == {"busmon"}, tops
    for part in PARTS:
        assert (installed / "busmon" / part / "__init__.py").is_file(), part
    assert (installed / "busmon" / "tui" / "app.tcss").is_file()  # the dashboard's stylesheet travels
    (info,) = installed.glob("busmon-*.dist-info")
    entry_points = (info / "entry_points.txt").read_text()
    assert "busmon = busmon.tui.cli:main" in entry_points
    assert "busmon = busmon.probes.watching.pytest_plugin" in entry_points


def test_installed_busmon_imports_and_leaves_bus_probes_tui_free(installed: Path, tmp_path: Path) -> None:
    code = textwrap.dedent(f"""
        import importlib.util, sys
        import busmon, busmon.tui.cli, busmon.tui.app, busmon.probes.watching.pytest_plugin
        assert busmon.__file__.startswith({str(installed)!r}), busmon.__file__
        assert busmon.bus.__file__.startswith({str(installed)!r}), busmon.bus.__file__
        for name in {PARTS!r}:
            assert importlib.util.find_spec(name) is None, name
        print(busmon.__version__, busmon.watch.__module__)
    """)
    proc = run_installed(installed, tmp_path, "-c", code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [busmon.__version__, "busmon.probes.watching.watch"]


def test_installed_busmon_plays_a_scenario(installed: Path, tmp_path: Path) -> None:
    """A whole headless run from the installed package: what reads its own files' paths (the
    stuck-frame filters, the load generator's allocation sites) works from site-packages."""
    (tmp_path / "tiny.toml").write_text(textwrap.dedent("""
        name = "tiny"
        [probes]
        settle_timeout_s = 2
        [[runs]]
        name = "small"
        messages = 200
    """))
    proc = run_installed(installed, tmp_path, "-m", "busmon", "play", "tiny.toml", "--headless",
                         "--report", "r.json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert '"verdict": "clean"' in (tmp_path / "r.json").read_text()


def test_installed_busmon_runs_a_program_with_its_agent(installed: Path, tmp_path: Path) -> None:
    """``busmon run`` from site-packages: the agent's start-up file travels in the wheel, and
    the program (same Python, busmon on its path only through the agent) is judged."""
    assert (installed / "busmon" / "probes" / "agent" / "boot" / "sitecustomize.py").is_file()
    (tmp_path / "app.py").write_text(textwrap.dedent("""
        import asyncio
        async def main():
            asyncio.create_task(asyncio.Event().wait(), name="forgotten")
        asyncio.run(main())
    """))
    proc = run_installed(installed, tmp_path, "-m", "busmon", "run", "--settle-timeout", "0.2", "--",
                         sys.executable, "app.py")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "leaked 1 task" in proc.stderr and "forgotten" in proc.stderr


def test_import_busmon_alone_loads_no_part(tmp_path: Path) -> None:
    """The pytest plugin's entry point imports ``busmon`` in every session: it must stay light."""
    code = ("import sys, busmon; print(sorted(m for m in sys.modules if m.startswith('busmon.') "
            "or m.split('.')[0] in ('aiokafka', 'nats', 'textual', 'psutil')))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_public_names_are_the_modules_own() -> None:
    for name in busmon.__all__:
        value = getattr(busmon, name)
        if name != "__version__":
            module = sys.modules[busmon._EXPORTS[name]]
            assert getattr(module, name) is value, name
    assert set(dir(busmon)) >= set(busmon.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        busmon.nothing  # noqa: B018


def test_pytest_warning_filters_take_the_short_names(pytester: pytest.Pytester) -> None:
    """``-W error::busmon.LeakWarning`` (the README's) resolves through the lazy exports."""
    pytester.makepyfile(test_warns="""
        import warnings, busmon

        def test_warns():
            warnings.warn(busmon.LeakWarning("left a task"))
    """)
    quiet = ("-p", "no:cacheprovider", "-p", "no:textual-snapshot", "-p", "no:syrupy")
    result = pytester.runpytest_subprocess(*quiet, "-W", "error::busmon.LeakWarning")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*LeakWarning: left a task*"])
    pytester.runpytest_subprocess(*quiet, "-W", "ignore::busmon.LeakWarning").assert_outcomes(passed=1)


# -- imports run one way, without circles --------------------------------------------------------

#: subpackages of busmon.probes, and the ones each may import (model.py is everyone's)
PROBES_ORDER = {"observe": set(), "verdict": {"observe"}, "harness": {"observe", "verdict"},
                "watching": {"observe", "verdict"}, "recording": {"harness", "verdict"},
                "metrics": {"observe"},
                "agent": {"observe", "verdict", "watching", "recording", "harness", "metrics"}}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["busmon", *parts] if parts[0] != "busmon" else parts)


def imports_at_load(path: Path) -> set[str]:
    """The modules ``path`` imports when it is loaded or type-checked: top-level statements and
    ``if TYPE_CHECKING:`` blocks (an import inside a function is a deliberate lazy one)."""
    found: set[str] = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    body = list(tree.body)
    for node in body:
        if isinstance(node, ast.If):
            body += node.body + node.orelse
        elif isinstance(node, ast.Try):
            body += node.body + [s for h in node.handlers for s in h.body] + node.orelse + node.finalbody
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return found


def busmon_modules() -> dict[str, set[str]]:
    files = [p for part in SOURCES for p in (ROOT / part).rglob("*.py")]
    names = {module_name(p): p for p in files}
    return {name: {m for m in imports_at_load(p) if m in names and m != name} for name, p in names.items()}


def test_no_top_level_bus_probes_or_tui_imports_remain() -> None:
    for part in SOURCES:
        for path in (ROOT / part).rglob("*.py"):
            for name in imports_at_load(path):
                assert name.split(".")[0] not in PARTS, f"{path.relative_to(ROOT)} imports {name}"


def test_busmon_modules_import_one_way_without_circles() -> None:
    graph = busmon_modules()
    for name, deps in graph.items():
        for dep in deps:
            if name.startswith("busmon.bus"):
                assert not dep.startswith(("busmon.probes", "busmon.tui")), (name, dep)
            if name.startswith("busmon.probes"):
                assert not dep.startswith("busmon.tui"), (name, dep)
            mine, theirs = name.split(".")[2:3], dep.split(".")[2:3]
            if name.startswith("busmon.probes.") and dep.startswith("busmon.probes.") and mine and theirs \
                    and mine[0] in PROBES_ORDER and theirs[0] in PROBES_ORDER and mine != theirs:
                assert theirs[0] in PROBES_ORDER[mine[0]], f"{name} imports {dep}"
    assert find_circle(graph) is None, "import circle: " + " → ".join(find_circle(graph) or ())


def find_circle(graph: dict[str, set[str]]) -> tuple[str, ...] | None:
    """The first import circle in ``graph`` (module → the modules it imports), closed on itself;
    None when there is none. A module importing its own package's ``__init__`` is not one."""
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> tuple[str, ...] | None:
        if name in path:
            return path[path.index(name):] + (name,)
        if name in done:
            return None
        for dep in sorted(graph.get(name, ())):
            if not name.startswith(dep + "."):
                if circle := visit(dep, (*path, name)):
                    return circle
        done.add(name)
        return None

    for name in sorted(graph):
        if circle := visit(name, ()):
            return circle
    return None


def test_the_circle_check_finds_circles() -> None:
    """The check itself: the two circles issue 24 removed are found, a package's own __init__ is not one."""
    assert find_circle({"events": {"model", "session"}, "session": {"events"}, "model": set()}) == \
        ("events", "session", "events")
    assert find_circle({"a.leak_text": {"a.watch"}, "a.watch": {"a.leak_text"}}) == ("a.leak_text", "a.watch", "a.leak_text")
    assert find_circle({"a": {"a.b"}, "a.b": {"a"}}) is None
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


# -- a project with its own bus/ and tui/ --------------------------------------------------------

OWN_PROJECT_TEST = """
import asyncio
import bus, tui
from bus.orders import place

def test_own_packages_are_the_projects():
    assert bus.WHOSE == "the project's bus" and tui.WHOSE == "the project's tui"
    assert place("order-1") == "placed order-1"

async def test_clean_uses_own_bus():
    await asyncio.sleep(0)
    assert place("order-2") == "placed order-2"

async def test_leaks_a_task():
    asyncio.get_running_loop().create_task(asyncio.Event().wait(), name="own.forgotten")
"""


def test_a_project_with_its_own_bus_and_tui_runs_under_busmon(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
                     "busmon_settle_timeout_s = 0.2\n")
    pytester.mkpydir("bus")
    (pytester.path / "bus" / "__init__.py").write_text('WHOSE = "the project\'s bus"\n')
    (pytester.path / "bus" / "orders.py").write_text('def place(key):\n    return f"placed {key}"\n')
    pytester.mkpydir("tui")
    (pytester.path / "tui" / "__init__.py").write_text('WHOSE = "the project\'s tui"\n')
    pytester.makepyfile(test_own=OWN_PROJECT_TEST)
    result = pytester.runpytest_subprocess("--busmon", "-p", "no:cacheprovider", "-p", "no:textual-snapshot",
                                           "-p", "no:syrupy")
    result.assert_outcomes(passed=3, errors=1)  # busmon fails the leaking test at its teardown
    out = result.stdout.str()
    assert "own.forgotten" in out and "leaked 1 task" in out
