"""Models: architecture specs (:mod:`~gcnnkit.models.spec`), named presets
(:mod:`~gcnnkit.models.presets`) and the network a spec builds on a backend
(:mod:`~gcnnkit.models.network`). Depends on :mod:`gcnnkit.core` only."""
