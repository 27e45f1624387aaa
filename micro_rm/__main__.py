"""``python -m micro_rm``: the ``micro-rm`` command, for environments without the console script
on PATH (and launchers that take a module: ``torchrun -m micro_rm encode ...``)."""

from micro_rm.cli.app import run

if __name__ == "__main__":
    run()
