"""Install extras (issue 26): `pip install micro-rm` gives the library and the CLI; the service,
the plots and the RLHF frameworks are extras, and a command that needs a missing one names it.
A missing package is simulated by ``sys.modules[name] = None`` (then ``import name`` raises)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from micro_rm.errors import MicroRMError
from test_serve import GOOD, PROMPT, build_model

REPO = Path(__file__).resolve().parents[1]
OPTIONAL = ("fastapi", "starlette", "uvicorn", "prometheus_client", "matplotlib", "trl")
EXTRAS = {"serve": {"fastapi", "uvicorn", "prometheus-client"}, "plot": {"matplotlib"}, "trl": {"trl"}}


def _name(requirement: str) -> str:
    return requirement.split(";")[0].split("[")[0].split("=")[0].split(">")[0].split("<")[0].strip().lower()


def test_optional_packages_are_extras_not_requirements():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = {_name(r) for r in project["dependencies"]}
    extras = project["optional-dependencies"]
    assert {"serve", "plot", "trl", "verl", "openrlhf", "test-integrations", "dev"} <= set(extras)
    for extra, packages in EXTRAS.items():
        assert packages <= {_name(r) for r in extras[extra]}, extra
        assert not packages & core, f"{packages & core} should be in the [{extra}] extra only"
    assert "micro-rm[serve]" in extras["openrlhf"]          # OpenRLHF's HTTP route is the service
    assert all("==" in r for r in extras["test-integrations"])   # the versions the tests ran with


def test_the_library_and_the_cli_work_without_any_extra(tmp_path):
    """In a fresh interpreter where none of the optional packages can be imported: the package,
    its public names, the three adapters and the non-serve commands (`data list`, `score`)."""
    build_model().save_pretrained(tmp_path / "model")
    (tmp_path / "in.jsonl").write_text(json.dumps({"prompt": PROMPT, "responses": [GOOD]}) + "\n")
    code = f"""
import sys
for name in {OPTIONAL!r}:
    sys.modules[name] = None
import micro_rm
for name in micro_rm.__all__:
    getattr(micro_rm, name)
import micro_rm.integrations.openrlhf, micro_rm.integrations.trl, micro_rm.integrations.verl
from micro_rm.cli import main
assert main(["data", "list"]) == 0
assert main(["score", "--model", {str(tmp_path / "model")!r}, "--data", {str(tmp_path / "in.jsonl")!r},
             "--out", {str(tmp_path / "out.jsonl")!r}]) == 0
print("ok")
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-3000:]
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 1


def test_plots_without_matplotlib_name_the_plot_extra(monkeypatch):
    from micro_rm.eval.plots import _pyplot

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MicroRMError, match=r"^the plots need the plot extra: pip install 'micro-rm\[plot\]'$"):
        _pyplot()


def test_serve_without_the_service_stack_names_the_serve_extra(monkeypatch, tmp_path, capsys):
    from micro_rm.cli import main

    build_model().save_pretrained(tmp_path / "model")
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    assert main(["serve", "--model", str(tmp_path / "model"), "--state", str(tmp_path / "state.db")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'micro-rm[serve]'" in err, err
    assert not (tmp_path / "state.db").exists()
