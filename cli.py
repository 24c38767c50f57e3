"""plifnet's command line in a clone: ``python cli.py fit --config configs/mnist.yaml`` is ``plifnet fit
--config mnist`` of an installed plifnet (:mod:`plifnet.cli`)."""

from plifnet.cli import main

if __name__ == "__main__":
    main()
