"""gcnnkit-escnn: a gcnnkit backend built from escnn's steerable layers.

Entry point (see ``pyproject.toml``): backend ``escnn``. Needs escnn, installed separately with
``pip install --no-deps escnn==1.0.11`` (importing this package without it raises an
:class:`ImportError` that says so).
"""

from gcnnkit_escnn._compat import INSTALL_COMMAND
from gcnnkit_escnn.backend import EscnnBackend

__all__ = ["EscnnBackend", "INSTALL_COMMAND"]
__version__ = "0.1.0"
