"""DEVELOPERS.md's map ("Where things live") stays true to the tree.

The rule: every package folder of loralab/ has a row whose first cell names it (`loralab/core/`); every module
of a package is mapped when its file name (`lora.py`) appears in its package's row, or a backticked glob there
matches it (`lesson_*.py`); a top-level module is mapped when a row's first cell names it (`loralab/files.py`);
a folder without `__init__.py` is named in its parent's row (`static/`) or has its own row (`loralab/configs/`).
The `benchmarks/` scripts are mapped the same way. And every path the file names, backticked or linked, exists.
"""
from __future__ import annotations

import fnmatch
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXT = (ROOT / "DEVELOPERS.md").read_text(encoding="utf-8")
PATH_LIKE = re.compile(r"^[\w.][\w.\-/*]*$")
FILE_SUFFIXES = (".py", ".md", ".yaml", ".html")


def map_rows() -> dict[str, str]:
    """{each path the first cell of a row names: the whole row} of the "Where things live" table."""
    table = TEXT.split("## Where things live")[1].split("\n## ")[0]
    rows = {}
    for line in table.splitlines():
        if line.startswith("| `"):
            for key in re.findall(r"`([^`]+)`", line.split("|")[1]):
                rows[key] = line
    return rows


def _mapped(name: str, row: str) -> bool:
    return name in row or any(fnmatch.fnmatch(name, glob) for glob in re.findall(r"`([^`]*\*[^`]*)`", row))


def unmapped(rows: dict[str, str]) -> list[str]:
    missing = []
    for folder in [ROOT / "loralab", *sorted((ROOT / "loralab").rglob("*/")), ROOT / "benchmarks"]:
        if not folder.is_dir() or folder.name == "__pycache__":
            continue
        rel = folder.relative_to(ROOT).as_posix()
        if folder == ROOT / "loralab":
            missing += [f"loralab/{p.name}" for p in sorted(folder.glob("*.py")) if f"loralab/{p.name}" not in rows]
            continue
        row = rows.get(f"{rel}/")
        if row is None:
            parent = rows.get(f"{folder.parent.relative_to(ROOT).as_posix()}/", "")
            if (folder / "__init__.py").exists() or f"{folder.name}/" not in parent:
                missing.append(f"{rel}/")
            continue
        missing += [f"{rel}/{p.name}" for p in sorted(folder.glob("*.py"))
                    if p.name != "__init__.py" and not _mapped(p.name, row)]
    return missing


def named_paths() -> list[tuple[str, list[Path]]]:
    """(path as written, where it may be) for each backticked path and each link target in DEVELOPERS.md."""
    rows = map_rows()
    row_folder = {line: ROOT / key for key, line in rows.items() if key.endswith("/")}
    found = []
    for line in TEXT.splitlines():
        base = [row_folder[line]] if line in row_folder else []
        tokens = [t for t in re.findall(r"`([^`]+)`", line) if PATH_LIKE.match(t)
                  and ("/" in t or t.endswith(FILE_SUFFIXES)) and not t.endswith("/*")]
        links = [t for t in re.findall(r"\]\(([^)#]+)", line) if "://" not in t]
        for token in tokens + links:
            found.append((token, [where / token for where in (ROOT, ROOT / "loralab", *base)]))
    return found


def test_every_module_and_folder_is_on_the_map():
    assert unmapped(map_rows()) == []


def test_every_path_the_map_names_exists():
    def exists(candidate: Path) -> bool:
        text = candidate.as_posix()
        if "*" in text:
            return any(candidate.parent.glob(candidate.name))
        return candidate.exists() or Path(text + ".py").exists()

    assert [token for token, places in named_paths() if not any(exists(p) for p in places)] == []


def test_the_rule_catches_an_omission():
    rows = map_rows()
    rows["loralab/core/"] = rows["loralab/core/"].replace("`lora.py`", "`the factors`")
    assert unmapped(rows) == ["loralab/core/lora.py"]
