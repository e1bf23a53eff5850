"""The core: what a G-CNN is, independent of how its layers are computed.

Groups and their action on images (:mod:`~gcnnkit.core.group`, :mod:`~gcnnkit.core.transforms`),
representations and field types (:mod:`~gcnnkit.core.representation`, :mod:`~gcnnkit.core.fields`),
the backend contract (:mod:`~gcnnkit.core.backend`) and the layers every backend shares
(:mod:`~gcnnkit.core.layers`), plugin discovery (:mod:`~gcnnkit.core.registry`), equivariance
measurement (:mod:`~gcnnkit.core.equivariance`) and user errors (:mod:`~gcnnkit.core.errors`).

Plugins (backends and groups) import from here and nowhere else in gcnnkit, except
:mod:`gcnnkit.testing` in their tests. The core imports nothing from the rest of gcnnkit, and
nothing in gcnnkit imports a plugin (``lint-imports`` checks these rules; see ``[tool.importlinter]``
in ``pyproject.toml``).
"""
