"""The built-in adapters of the neuron contract (:mod:`plifnet.contract`) for the peer libraries.

Each maps its library's neuron classes onto the contract: what is a neuron, how to reset it, where
its spikes are and its tau in time steps. None imports its library before a network holds one of
its modules (a claim starts with :func:`plifnet.contract.from_package`), so plifnet needs none of them
installed. They come in through the door a library of your own uses: entry points of the group
``plifnet.adapters`` (plifnet's own are declared in its ``pyproject.toml``).
"""
