"""Data modules: static images (:mod:`plifnet.data.static`), event-camera recordings (:mod:`plifnet.data.recordings`)
as frames (:mod:`plifnet.data.events`), MNIST as sequences (:mod:`plifnet.data.sequences`), ECG wave segmentation
(:mod:`plifnet.data.ecg`) and spoken digits and commands as spikes (:mod:`plifnet.data.speech`)."""

from plifnet.data.ecg import ECGDataModule
from plifnet.data.events import EventDataModule
from plifnet.data.sequences import SequentialMNISTDataModule
from plifnet.data.speech import SpeechDataModule
from plifnet.data.static import StaticDataModule

__all__ = ["ECGDataModule", "EventDataModule", "SequentialMNISTDataModule", "SpeechDataModule", "StaticDataModule"]
