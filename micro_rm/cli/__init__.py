"""The ``micro-rm`` command line. ``main(argv) -> int`` lets tests call it directly."""

from micro_rm.cli.app import app, main, run

__all__ = ["app", "main", "run"]
