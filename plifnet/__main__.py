"""``python -m plifnet`` is the ``plifnet`` command (:func:`plifnet.cli.run`)."""

from plifnet.cli import run

if __name__ == "__main__":
    run()
