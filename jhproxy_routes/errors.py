"""Why a server's port targets are not known (raised by ``targets.py`` and ``docker.py``)."""


class SharedHostError(Exception):
    """The server's address is shared with other users' servers."""


class TargetsPending(Exception):
    """The server is between two states (its container is restarting): ask again later."""
