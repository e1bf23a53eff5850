"""gcnnkit's from-scratch backend: regular group convolutions built by exact filter transforms.

Entry points (see ``pyproject.toml``): backend ``native``; groups C1, C2, C4, D1, D2, D4.
"""

from gcnnkit_native.backend import NativeBackend

__all__ = ["NativeBackend"]
