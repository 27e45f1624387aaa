"""The README is a runnable guide: its blocks run in order on an empty folder, print what it
shows, and its results tables are what benchmarks/readme_tables.py prints from results/."""

from __future__ import annotations

import subprocess
import sys

import pytest

from readme_blocks import README, REPO, blocks, matches, run, workspace

DATA = REPO.parent / "shared" / "data"


@pytest.mark.skipif(not (DATA / "dsp-domain-specific-preference").is_dir(), reason="needs ../shared/data (DSP)")
def test_every_readme_block_runs_in_order_and_prints_what_the_readme_shows(tmp_path):
    found = blocks(README.read_text(encoding="utf-8"))
    assert len(found) >= 10
    code, printed = run(found, workspace(tmp_path))
    assert code == 0, f"block {len(printed)} of {len(found)} failed:\n{found[len(printed) - 1].code}\n---\n{printed[-1][-3000:]}"
    for i, (block, out) in enumerate(zip(found, printed)):
        if block.output is not None:
            assert matches(block.output.code, out), (f"block {i} printed\n{out}\nbut the README shows\n"
                                                     f"{block.output.code}\n(python tests/readme_blocks.py --update)")


def test_readme_results_tables_are_generated_from_results():
    printed = subprocess.run([sys.executable, str(REPO / "benchmarks" / "readme_tables.py")], capture_output=True,
                             text=True, check=True).stdout
    readme = README.read_text(encoding="utf-8")
    for table in printed.strip().split("\n\n"):
        assert table.strip() in readme, f"README's table is stale; paste the output of benchmarks/readme_tables.py:\n{table}"


def test_a_block_that_prints_something_else_is_caught():
    assert matches("a\n...\nz\n", "a\nb\nc\nz\n")
    assert not matches("accuracy 0.648\n", "accuracy 0.649\n")
