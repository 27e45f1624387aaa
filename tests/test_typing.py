"""The names the README imports from micro_rm are typed: mypy reveals a real type, never ``Any``,
for each of them (the package root's lazy exports are re-exported under TYPE_CHECKING; the
package ships ``py.typed``)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
IMPORT = re.compile(r"^(?:>>> )?from (micro_rm[\w.]*) import ([\w, ]+?)\s*(?:#.*)?$")


def readme_imports() -> list[tuple[str, str]]:
    """``(module, name)`` of every ``from micro_rm... import ...`` line of README.md."""
    found = []
    for line in (REPO / "README.md").read_text(encoding="utf-8").splitlines():
        match = IMPORT.match(line.strip())
        if match:
            found += [(match.group(1), name.strip()) for name in match.group(2).split(",") if name.strip()]
    return sorted(set(found))


def test_the_package_ships_py_typed():
    assert (REPO / "micro_rm" / "py.typed").is_file()


def test_mypy_reveals_no_any_for_the_readme_imports(tmp_path):
    pytest.importorskip("mypy", reason="pip install mypy (the dev extra) to check the public API's types")
    imports = readme_imports()
    assert ("micro_rm", "MiCRo") in imports
    import micro_rm

    names = [("micro_rm", name) for name in micro_rm.__all__ if name != "__version__"]
    probe = tmp_path / "probe.py"
    lines = [f"from {module} import {name} as _{i}" for i, (module, name) in enumerate(imports + names)]
    lines += [f"reveal_type(_{i})" for i in range(len(imports + names))]
    lines += ["reveal_type(_0 if False else None)"]          # a line mypy answers, so the probe ran
    probe.write_text("\n".join(lines) + "\n")
    done = subprocess.run([sys.executable, "-m", "mypy", "--follow-imports=silent", "--ignore-missing-imports",
                           "--no-error-summary", "--cache-dir", str(tmp_path / ".mypy_cache"), str(probe)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    revealed = re.findall(r'probe\.py:(\d+): note: Revealed type is "(.*)"', done.stdout)
    assert len(revealed) == len(imports + names) + 1, done.stdout + done.stderr
    untyped = {lines[int(n) - 1 - len(imports + names)]: kind for n, kind in revealed
               if kind == "Any" or kind.startswith("Any ")}
    assert not untyped, f"mypy sees Any for: {untyped}"
    assert "error:" not in done.stdout, done.stdout
