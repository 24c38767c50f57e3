"""Data modules: static images (:mod:`plifnet.data.static`)."""

from plifnet.data.static import StaticDataModule

__all__ = ["StaticDataModule"]
