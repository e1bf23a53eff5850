"""gcnnkit-hexflip: the symmetries of a regular hexagon as a gcnnkit group."""

import math

from gcnnkit.core.group import Group


def hexagon() -> Group:
    """6 rotations by k·60° (counter-clockwise) and 6 mirrors r^k f (mirror x ↦ -x, then rotate).

    Only e, r3 (180°), f and r3f map pixels to pixels; the others are interpolated.
    """
    names, matrices = [], []
    for mirror in (1.0, -1.0):  # the matrix of r^k f is R(k·60°) @ diag(-1, 1)
        for k in range(6):
            c, s = round(math.cos(k * math.pi / 3), 12), round(math.sin(k * math.pi / 3), 12)
            rotation = f"r{k}" if k else ""
            names.append(rotation + "f" if mirror < 0 else rotation or "e")
            matrices.append([[mirror * c, -s], [mirror * s, c]])
    return Group(
        "Hex",  # must be the entry point's name
        names,
        matrices,
        api_version=1,  # the group API version this plugin is written for
        escnn={"gspace": "flipRot2dOnR2", "N": 6},  # the same group in escnn
    )
