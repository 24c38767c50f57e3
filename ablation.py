"""Studies in a clone: ``python ablation.py ARGS`` is ``plifnet study ARGS`` (:mod:`plifnet.study`)."""

from plifnet.study import main

if __name__ == "__main__":
    main()
