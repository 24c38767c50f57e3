"""plifnet's Lightning callbacks, one module per concern:

* :mod:`~plifnet.callbacks.state`: :class:`ResetState` (every neuron reset before each batch, and the
  check that nothing else remembers), :class:`ResumeRandomState` (random state for an exact resume);
* :mod:`~plifnet.callbacks.safety`: :class:`StopOnNonFinite`, :class:`SaveOnInterrupt` (and :class:`Interrupted`);
* :mod:`~plifnet.callbacks.monitors`: :class:`TauMonitor` (where tau is logged: ``tau/<layer>``),
  :class:`FiringRateMonitor`, :class:`SynapticOps` (operations and energy);
* :mod:`~plifnet.callbacks.probe`: :class:`Probe` (figures of every spiking layer on a fixed validation batch);
* :mod:`~plifnet.callbacks.outputs`: :class:`ProgressBar`, :class:`RunHistory`, :class:`LearningCurves` (``curves.png``),
  :class:`ConfusionMatrix` (at test), :class:`PredictionWriter`.

Every class is importable from here (``plifnet.callbacks.ResetState``), as configs name them.
"""

from plifnet.callbacks.common import exact_sum, spiking_layers
from plifnet.callbacks.monitors import FiringRateMonitor, SynapticOps, TauMonitor
from plifnet.callbacks.outputs import ConfusionMatrix, LearningCurves, PredictionWriter, ProgressBar, RunHistory
from plifnet.callbacks.probe import Probe
from plifnet.callbacks.safety import Interrupted, SaveOnInterrupt, StopOnNonFinite
from plifnet.callbacks.state import ResetState, ResumeRandomState

__all__ = [
    "ConfusionMatrix",
    "FiringRateMonitor",
    "Interrupted",
    "LearningCurves",
    "PredictionWriter",
    "Probe",
    "ProgressBar",
    "ResetState",
    "ResumeRandomState",
    "RunHistory",
    "SaveOnInterrupt",
    "StopOnNonFinite",
    "SynapticOps",
    "TauMonitor",
    "exact_sum",
    "spiking_layers",
]
