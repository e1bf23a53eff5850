"""gcnnkit-rotations: an example third-party group plugin (C8, C16, D8, D16, C{N}, D{N}) and the continuous
groups SO2, O2, SO2_{N}, O2_{N} (band limit N; built by the escnn backend only).

The groups are registered as entry points in ``gcnnkit.groups`` (see ``pyproject.toml``), so
installing the distribution is all it takes: ``gcnnkit.get_group("C8")``.
"""

from gcnnkit_rotations.continuous import O2, SO2, ContinuousGroup, o2, so2
from gcnnkit_rotations.groups import C8, C16, D8, D16, cyclic, dihedral

__version__ = "0.2.0"

__all__ = ["C8", "C16", "D8", "D16", "cyclic", "dihedral", "SO2", "O2", "so2", "o2", "ContinuousGroup"]
