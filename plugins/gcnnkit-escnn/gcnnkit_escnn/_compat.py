"""Import escnn once, with a one-line error when it is missing, and patch one incompatibility.

* escnn is not a declared dependency of this distribution (pip would build ``py3nj``, which
  needs a Fortran compiler); a missing escnn is an :class:`ImportError` naming the install
  command, which gcnnkit's registry reports as a failed plugin while every other plugin works.
* escnn warns at import that ``py3nj`` is missing. Only SO(3) Clebsch–Gordan coefficients need
  it; nothing in the 2D layers does, so that one warning is silenced here (``import escnn`` in
  your own code still shows it).
* escnn 1.0.11 passes ``np.matrix`` to ``sklearn.utils.extmath.randomized_svd``, which
  scikit-learn ≥ 1.6 refuses (escnn issue #112); the call is wrapped to pass ``np.asarray``.
"""

from __future__ import annotations

import importlib.util
import warnings

#: The command that installs escnn without building py3nj.
INSTALL_COMMAND = "pip install --no-deps escnn==1.0.11"


def _escnn_missing() -> str | None:
    """Why escnn cannot be used, or None when a real escnn package is there.

    A folder ``escnn/`` without ``__init__.py`` is a namespace package to Python, not escnn: what
    ``pip uninstall escnn`` leaves behind when escnn wrote files into its own package that pip did
    not install (the disk cache ``escnn/group/_cache``). Importing it "works" until the first real
    module, so it is reported here as escnn missing, naming the leftover folder.
    """
    spec = importlib.util.find_spec("escnn")
    if spec is None:
        return "which is not installed"
    if spec.origin is None:  # a namespace package: only folders, no escnn/__init__.py
        folders = ", ".join(str(p) for p in (spec.submodule_search_locations or []))
        return f"which is not installed (only the folder {folders} is left, e.g. from an uninstall; it can be deleted)"
    return None


_missing = _escnn_missing()
if _missing is not None:
    raise ImportError(f"the escnn backend needs escnn, {_missing}; install it with: {INSTALL_COMMAND}")

try:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*py3nj.*", category=UserWarning)
        import escnn  # noqa: F401
        import escnn.group._numerical as _numerical
        from escnn import gspaces  # noqa: F401
        from escnn import nn as enn  # noqa: F401
except ImportError as exc:  # escnn is there but one of its own dependencies is not
    raise ImportError(
        f"escnn is installed but cannot be imported ({type(exc).__name__}: {exc}); install its dependencies "
        f"with: pip install lie_learn pymanopt autograd joblib 'numpy<2' scipy"
    ) from exc


def _patch_randomized_svd() -> None:
    import numpy as np

    original = getattr(_numerical, "randomized_svd", None)
    if original is None or getattr(original, "_gcnnkit_asarray", False):
        return

    def randomized_svd(matrix, *args, **kwargs):
        return original(np.asarray(matrix), *args, **kwargs)

    randomized_svd._gcnnkit_asarray = True
    _numerical.randomized_svd = randomized_svd


_patch_randomized_svd()

__all__ = ["INSTALL_COMMAND", "enn", "gspaces"]
