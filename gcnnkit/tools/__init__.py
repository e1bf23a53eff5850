"""Tools over models and runs: cross-backend comparison (:mod:`~gcnnkit.tools.compare`),
benchmarks (:mod:`~gcnnkit.tools.bench`) and their timing loop (:mod:`~gcnnkit.tools.timing`), export to
plain PyTorch (:mod:`~gcnnkit.tools.export`), plots (:mod:`~gcnnkit.tools.plots`) and the command line's table
layout (:mod:`~gcnnkit.tools.table`). Depends on :mod:`gcnnkit.run` and below (enforced by ``lint-imports``,
see ``[tool.importlinter]`` in ``pyproject.toml``)."""
