"""Tools over models and runs: cross-backend comparison (:mod:`~gcnnkit.tools.compare`),
benchmarks (:mod:`~gcnnkit.tools.bench`), export to plain PyTorch (:mod:`~gcnnkit.tools.export`)
and plots (:mod:`~gcnnkit.tools.plots`). Depends on :mod:`gcnnkit.run` and below."""
