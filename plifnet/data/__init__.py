"""Data modules: static images (:mod:`plifnet.data.static`) and event-camera recordings (:mod:`plifnet.data.recordings`) as frames (:mod:`plifnet.data.events`)."""

from plifnet.data.events import EventDataModule
from plifnet.data.static import StaticDataModule

__all__ = ["EventDataModule", "StaticDataModule"]
