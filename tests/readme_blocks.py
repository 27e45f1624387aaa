"""Run README.md's code blocks in order, as a newcomer would, and check what they print.

    python tests/readme_blocks.py            # run every block; report the first that fails
    python tests/readme_blocks.py --update   # run them and rewrite README's output blocks
    python tests/readme_blocks.py --keep DIR # leave the folder the blocks ran in at DIR

The rules the README is written to:
- ```bash and ```python blocks run, in order, in one bash session started in an empty folder
  beside ``../shared`` (so ``../shared/data`` is the offline data, as in a clone), with the
  project's ``.venv/bin`` first on PATH; a python block runs as ``python - <<'EOF'``. Shell
  variables, background servers and files carry over from block to block; every background job
  is stopped at the end.
- A ```text block right after a block is what that block prints (stdout and stderr together);
  a line ``...`` in it stands for any number of lines, and ``...`` within a line for any text. ``--update`` rewrites these blocks from a
  run, so the README's outputs are generated, never typed.
- The ports 8000 and 8001 are replaced by free ports, so two runs never collide.
- A block preceded by ``<!-- not run: why -->`` is shown but not run (``make test`` runs this).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
NOT_RUN = re.compile(r"<!-- not run: [^>]*-->\s*$")
PORTS = ("8000", "8001")
MARK = "__readme_block_{}__"


@dataclass
class Block:
    language: str
    code: str
    start: int                          # offsets of the block in the README
    end: int
    output: Optional["Block"] = None    # the ```text block that shows what it prints


def blocks(text: str) -> list[Block]:
    """The runnable blocks of ``text`` in order, each with its output block if it has one."""
    found: list[Block] = []
    fences = list(FENCE.finditer(text))
    for i, match in enumerate(fences):
        language = match.group(1)
        if language not in ("bash", "python") or NOT_RUN.search(text[:match.start()].rstrip() + "\n"):
            continue
        block = Block(language, match.group(2), match.start(), match.end())
        following = fences[i + 1] if i + 1 < len(fences) else None
        if following is not None and following.group(1) == "text" and not text[match.end():following.start()].strip():
            block.output = Block("text", following.group(2), following.start(), following.end())
        found.append(block)
    return found


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def script(found: list[Block], ports: dict[str, str]) -> str:
    """One bash script: each block after a marker line, python blocks as here-documents."""
    parts = ["set -eo pipefail", "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT"]
    for i, block in enumerate(found):
        code = block.code
        for old, new in ports.items():
            code = re.sub(rf"\b{old}\b", new, code)
        parts.append(f"echo {MARK.format(i)}")
        parts.append(f"python - <<'README_EOF'\n{code}README_EOF" if block.language == "python" else code)
    parts.append(f"echo {MARK.format(len(found))}")
    return "\n".join(parts) + "\n"


def run(found: list[Block], workdir: Path, timeout: int = 1500) -> tuple[int, list[str]]:
    """Run the blocks in ``workdir``; return the exit code and what each block printed."""
    ports = {port: free_port() for port in PORTS}
    env = {**os.environ, "PATH": f"{REPO / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
           "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1",
           "MICRO_RM_CACHE": str(workdir.parent / "cache")}     # empty: what is encoded is the same every run
    env.pop("MICRO_RM_MODEL", None)
    result = subprocess.run(["bash", "-c", script(found, ports)], cwd=workdir, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
    printed = re.split(r"^__readme_block_\d+__\n", result.stdout, flags=re.M)[1:]
    for port, used in ports.items():
        printed = [p.replace(used, port) for p in printed]
    return result.returncode, printed


def matches(expected: str, printed: str) -> bool:
    """Whether ``printed`` is ``expected``, where a line ``...`` stands for any lines and ``...``
    within a line for any text (a wall time, say)."""
    pattern = "".join(r"(?:.*\n)*?" if line.strip() == "..." else
                      ".*?".join(map(re.escape, line.rstrip().split("..."))) + r"[ \t]*\n"
                      for line in expected.splitlines())
    text = "".join(line.rstrip() + "\n" for line in printed.splitlines())
    return re.fullmatch(pattern, text) is not None


def workspace(root: Path) -> Path:
    """An empty folder ``root/main`` beside ``root/shared`` (a link to this checkout's ../shared)."""
    shared = REPO.parent / "shared"
    (root / "main").mkdir(parents=True)
    if shared.exists():
        (root / "shared").symlink_to(shared)
    return root / "main"


def main(argv: list[str]) -> int:
    readme = Path(argv[argv.index("--file") + 1]) if "--file" in argv else README
    text = readme.read_text(encoding="utf-8")
    found = blocks(text)
    if "--keep" in argv:
        code, printed = run(found, workspace(Path(argv[argv.index("--keep") + 1])))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            code, printed = run(found, workspace(Path(tmp)))
    if code != 0:
        print(f"README block {len(printed)} of {len(found)} failed (exit {code}):\n{printed[-1] if printed else ''}")
        return 1
    if "--update" in argv:
        for block, out in sorted(zip(found, printed), key=lambda pair: -pair[0].start):
            if block.output is not None and not matches(block.output.code, out):
                text = text[:block.output.start] + f"```text\n{out}```" + text[block.output.end:]
        readme.write_text(text, encoding="utf-8")
        return 0
    stale = [i for i, (block, out) in enumerate(zip(found, printed)) if block.output and not matches(block.output.code, out)]
    for i in stale:
        print(f"block {i}: printed\n{printed[i]}\nREADME shows\n{found[i].output.code}")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
