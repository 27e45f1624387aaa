"""``python -m micro_rm.cli``: the ``micro-rm`` command, for launchers that take a module
(``torchrun -m micro_rm.cli encode ...``)."""

from micro_rm.cli.app import run

if __name__ == "__main__":
    run()
