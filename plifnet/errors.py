"""What plifnet refuses, as one type: a :class:`UserError` names the input that is wrong and the fix.

Every refusal of an input (a value, a config, a checkpoint, a plug-in, a data folder, a network) raises it;
the entry points (``plifnet fit|...|study|export``, NeuroBench) print it as one line, and anything else keeps
its traceback. It is a ``ValueError`` and a ``TypeError``, so code that catches either still does.
"""


class UserError(ValueError, TypeError):
    """An input plifnet refuses; the message names it and what to do instead."""


class PluginError(UserError, ImportError):
    """A plug-in (an entry point or a class path) that cannot be imported or is not of the kind asked for."""


class MissingData(UserError, FileNotFoundError):
    """A dataset that is not where the configuration says."""
