"""The core packages import in one direction: core <- adapters <- surgery <- formats, no cycles between their
modules (read from the source, function-level imports included), and each module imports on its own."""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["core", "adapters", "surgery", "formats"]          # each may import only from itself and earlier ones


def _imports() -> dict[str, set[str]]:
    """{module: loralab modules it imports anywhere in its source}, for the modules of LAYERS."""
    graph = {}
    for package in LAYERS:
        for path in sorted((ROOT / "loralab" / package).glob("*.py")):
            name = f"loralab.{package}.{path.stem}".removesuffix(".__init__")
            found = set()
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("loralab."):
                    found.add(node.module)
                elif isinstance(node, ast.Import):
                    found.update(a.name for a in node.names if a.name.startswith("loralab."))
            graph[name] = found - {name}
    return graph


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def test_packages_import_in_one_direction():
    wrong = [(m, d) for m, deps in _imports().items() for d in deps
             if _layer(d) is not None and LAYERS.index(_layer(d)) > LAYERS.index(_layer(m))]
    assert wrong == []


def test_no_import_cycle_between_modules():
    graph = {m: {d for d in deps if d in _imports()} for m, deps in _imports().items()}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and (seen.add(nxt) or reaches(nxt, goal, seen))):
                return True
        return False

    assert [m for m in graph if reaches(m, m, set())] == []


def test_each_module_imports_on_its_own():
    # One interpreter (torch loads once); loralab's modules are forgotten before each import.
    script = (
        "import importlib, sys\n"
        f"for module in {sorted(_imports())!r}:\n"
        "    for name in [n for n in sys.modules if n.startswith('loralab')]:\n"
        "        del sys.modules[name]\n"
        "    importlib.import_module(module)\n")
    subprocess.run([sys.executable, "-c", script], check=True, cwd=ROOT)
