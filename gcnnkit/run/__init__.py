"""Runs: configs (:mod:`~gcnnkit.run.config`), data (:mod:`~gcnnkit.run.data`), the run directory
(:mod:`~gcnnkit.run.rundir`), training (:mod:`~gcnnkit.run.training`, :mod:`~gcnnkit.run.distributed`),
evaluation (:mod:`~gcnnkit.run.evaluation`) and the equivariance check of a config
(:mod:`~gcnnkit.run.check`). Depends on :mod:`gcnnkit.models` and :mod:`gcnnkit.core`."""
