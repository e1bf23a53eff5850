"""Plugin discovery: backends and groups from Python entry points.

Plugins declare entry points in their ``pyproject.toml``::

    [project.entry-points."gcnnkit.backends"]
    native = "gcnnkit_native.backend:NativeBackend"

    [project.entry-points."gcnnkit.groups"]
    C4 = "gcnnkit_native.groups:C4"
    "C{N}" = "my_plugin:cyclic"      # a family: called with N for any name C<digits>

Discovery is lazy: entry points are listed on first use, and a plugin's module is imported
only when its name is asked for (or when :func:`plugin_report` loads everything). A plugin
that fails to import, is written for another API version or collides with another plugin's
name is reported with its name, distribution, version and the original error; every other
plugin keeps working. ``GCNNKIT_DISABLE_PLUGIN_AUTOLOAD=1`` turns discovery off, leaving only
what is registered in-process with :func:`register_backend` / :func:`register_group`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from gcnnkit.backend import BACKEND_API_VERSION, Backend
from gcnnkit.errors import PluginError
from gcnnkit.group import GROUP_API_VERSION, Group

ENTRY_POINT_GROUPS = {"backend": "gcnnkit.backends", "group": "gcnnkit.groups"}
API_VERSIONS = {"backend": BACKEND_API_VERSION, "group": GROUP_API_VERSION}
AUTOLOAD_ENV = "GCNNKIT_DISABLE_PLUGIN_AUTOLOAD"
_FAMILY_FIELD = "{N}"


@dataclass
class PluginInfo:
    """One discovered plugin (an entry point or an in-process registration)."""

    kind: str
    name: str
    target: str
    distribution: str | None = None
    version: str | None = None
    error: str | None = None
    loader: Callable[[], Any] | None = field(default=None, repr=False, compare=False)

    @property
    def is_family(self) -> bool:
        """True for a name pattern like ``C{N}`` that stands for many groups."""
        return _FAMILY_FIELD in self.name

    @property
    def origin(self) -> str:
        """``"<distribution> <version>"`` or ``"registered in-process"``."""
        if self.distribution is None:
            return "registered in-process"
        return f"{self.distribution} {self.version}"

    def family_match(self, name: str) -> int | None:
        """The ``N`` of ``name`` when it matches this family's pattern, else ``None``."""
        prefix, _, suffix = self.name.partition(_FAMILY_FIELD)
        m = re.fullmatch(re.escape(prefix) + r"(\d+)" + re.escape(suffix), name)
        return int(m.group(1)) if m else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "target": self.target,
            "distribution": self.distribution,
            "version": self.version,
            "error": self.error,
        }


class Registry:
    """Holds discovered and registered plugins of both kinds; one instance per process."""

    def __init__(self) -> None:
        self._infos: dict[str, list[PluginInfo]] | None = None
        self._manual: dict[str, list[PluginInfo]] = {"backend": [], "group": []}
        self._objects: dict[tuple[str, str], Any] = {}

    # ------------------------------------------------------------ discovery
    def _discover(self) -> dict[str, list[PluginInfo]]:
        if self._infos is None:
            infos: dict[str, list[PluginInfo]] = {"backend": [], "group": []}
            if os.environ.get(AUTOLOAD_ENV, "").strip() not in ("1", "true", "yes"):
                for kind, ep_group in ENTRY_POINT_GROUPS.items():
                    seen: set[tuple[str, str, str]] = set()
                    for ep in metadata.entry_points(group=ep_group):
                        dist = getattr(ep, "dist", None)
                        dist_name = dist.metadata["Name"] if dist is not None else "unknown"
                        version = dist.version if dist is not None else "unknown"
                        key = (ep.name, ep.value, dist_name)
                        if key in seen:  # the same distribution visible twice on sys.path
                            continue
                        seen.add(key)
                        infos[kind].append(PluginInfo(kind, ep.name, ep.value, dist_name, version, loader=ep.load))
            self._infos = infos
        return {kind: self._infos[kind] + self._manual[kind] for kind in ENTRY_POINT_GROUPS}

    def refresh(self) -> None:
        """Forget discovered entry points and loaded objects (e.g. after ``pip install``)."""
        self._infos = None
        self._objects.clear()

    def register(self, kind: str, name: str, obj: Any) -> None:
        """Register a backend or group (or group family ``"X{N}"``) in-process, without an entry point."""
        if kind not in ENTRY_POINT_GROUPS:
            raise ValueError(f"kind must be one of {list(ENTRY_POINT_GROUPS)}, got {kind!r}")
        target = f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', type(obj).__name__)}"
        self._manual[kind].append(PluginInfo(kind, name, target, loader=lambda: obj))
        self._objects.pop((kind, name), None)

    def unregister(self, kind: str, name: str) -> None:
        """Remove an in-process registration."""
        self._manual[kind] = [i for i in self._manual[kind] if i.name != name]
        self._objects.pop((kind, name), None)

    # --------------------------------------------------------------- lookup
    def names(self, kind: str) -> list[str]:
        """Names (and family patterns) of the plugins of ``kind`` that are installed."""
        return sorted({info.name for info in self._discover()[kind]})

    def _candidates(self, kind: str, name: str) -> tuple[list[PluginInfo], int | None]:
        infos = self._discover()[kind]
        exact = [i for i in infos if i.name == name and not i.is_family]
        if exact:
            return exact, None
        for info in infos:
            if info.is_family and (n := info.family_match(name)) is not None:
                return [i for i in infos if i.name == info.name], n
        return [], None

    def get(self, kind: str, name: str) -> Any:
        """The loaded, validated object for ``name``: a :class:`Backend` or a :class:`Group`."""
        if (kind, name) in self._objects:
            return self._objects[(kind, name)]
        candidates, n = self._candidates(kind, name)
        if not candidates:
            installed = ", ".join(self.names(kind)) or "none"
            hint = ""
            if os.environ.get(AUTOLOAD_ENV):
                hint = f" ({AUTOLOAD_ENV} is set, so entry points are not loaded)"
            raise PluginError(f"unknown {kind} {name!r}; installed: {installed}{hint}")
        if len(candidates) > 1:
            origins = " and ".join(f"{c.origin} ({c.target})" for c in candidates)
            raise PluginError(f"{kind} name {candidates[0].name!r} is provided twice: by {origins}; uninstall one")
        obj = self._load(candidates[0], name, n)
        self._objects[(kind, name)] = obj
        return obj

    def _load(self, info: PluginInfo, name: str, n: int | None) -> Any:
        where = f"{info.kind} plugin {info.name!r} ({info.origin}, {info.target})"
        try:
            raw = info.loader()
        except Exception as exc:  # a broken plugin must not take the others down
            info.error = f"{type(exc).__name__}: {exc}"
            raise PluginError(f"{where} failed to load: {info.error}") from exc
        try:
            obj = self._instantiate(info, raw, n)
        except PluginError as exc:
            info.error = str(exc)
            raise PluginError(f"{where}: {exc}") from exc
        except Exception as exc:
            info.error = f"{type(exc).__name__}: {exc}"
            raise PluginError(f"{where} failed to build {name!r}: {info.error}") from exc
        version = getattr(obj, "api_version", None)
        expected = API_VERSIONS[info.kind]
        if version != expected:
            declared = "declares no api_version" if version is None else f"was written for {info.kind} API version {version}"
            info.error = f"{declared}; this gcnnkit has {info.kind} API version {expected}"
            raise PluginError(f"{where} {info.error}")
        if info.kind == "group" and obj.name != name:
            info.error = f"asked for {name!r} but it built a group named {obj.name!r}"
            raise PluginError(f"{where}: {info.error}")
        return obj

    @staticmethod
    def _instantiate(info: PluginInfo, raw: Any, n: int | None) -> Any:
        if info.kind == "backend":
            obj = raw() if isinstance(raw, type) else raw
            if not isinstance(obj, Backend):
                raise PluginError(f"expected a gcnnkit.backend.Backend, got {type(obj).__name__}")
            return obj
        if info.is_family:
            if not callable(raw):
                raise PluginError(f"a group family must be a callable taking N, got {type(raw).__name__}")
            obj = raw(n)
        else:
            obj = raw if isinstance(raw, Group) else raw()
        if not isinstance(obj, Group):
            raise PluginError(f"expected a gcnnkit.group.Group, got {type(obj).__name__}")
        return obj

    def report(self) -> list[PluginInfo]:
        """Every plugin, each loaded once so that failures carry their reason in ``error``."""
        infos = self._discover()
        for kind, items in infos.items():
            for info in items:
                if info.is_family:
                    continue
                try:
                    self.get(kind, info.name)
                except PluginError as exc:
                    info.error = info.error or str(exc)
        return [info for kind in ENTRY_POINT_GROUPS for info in infos[kind]]


#: The process-wide registry used by the functions below.
REGISTRY = Registry()


def get_backend(name: str) -> Backend:
    """The backend registered as ``name``; :class:`PluginError` lists the installed ones."""
    return REGISTRY.get("backend", name)


def get_group(name: str) -> Group:
    """The group registered as ``name`` (or matched by a family such as ``C{N}``)."""
    return REGISTRY.get("group", name)


def backend_names() -> list[str]:
    return REGISTRY.names("backend")


def group_names() -> list[str]:
    return REGISTRY.names("group")


def register_backend(name: str, backend: Backend | type[Backend]) -> None:
    """Register a backend in this process (no entry point needed), e.g. from a notebook."""
    REGISTRY.register("backend", name, backend)


def register_group(name: str, group: Group | Callable[..., Group]) -> None:
    """Register a group, a zero-argument factory, or (for ``"X{N}"`` names) a factory of ``N``."""
    REGISTRY.register("group", name, group)


def plugin_report() -> list[PluginInfo]:
    """All plugins, loaded, with ``error`` set on those that failed."""
    return REGISTRY.report()
