"""``python -m plifnet`` is the ``plifnet`` command (:func:`plifnet.commands.run`)."""

from plifnet.commands import run

if __name__ == "__main__":
    run()
