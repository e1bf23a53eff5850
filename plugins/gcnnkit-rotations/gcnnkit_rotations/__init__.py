"""gcnnkit-rotations: an example third-party group plugin (C8, C16, D8, D16, C{N}, D{N}).

The groups are registered as entry points in ``gcnnkit.groups`` (see ``pyproject.toml``), so
installing the distribution is all it takes: ``gcnnkit.get_group("C8")``.
"""

from gcnnkit_rotations.groups import C8, C16, D8, D16, cyclic, dihedral

__version__ = "0.1.0"

__all__ = ["C8", "C16", "D8", "D16", "cyclic", "dihedral"]
