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
plugin keeps working, also when a plugin calls ``sys.exit`` on import (anything but Ctrl-C is
caught); what a plugin prints while it is imported goes to stderr, so ``--json`` output stays
valid. ``GCNNKIT_DISABLE_PLUGIN_AUTOLOAD=1`` turns discovery off, leaving only what is
registered in-process with :func:`register_backend` / :func:`register_group`.
``GCNNKIT_PLUGINS=native,escnn`` (like pytest's ``-p``) is an allow-list of distributions whose
entry points are loaded (``native`` stands for ``gcnnkit-native``), with or without autoload.

Name resolution (``docs/group-plugins.md``): an exact name (``C4``) always wins over a family
pattern (``C{N}``) that also matches it, so a family never collides with exact names; two
providers of the same exact name, or of the same family pattern, are a :class:`PluginError`
naming both distributions. :func:`require_plugins` checks that plugin distributions a config
needs are installed in the right versions.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import torch

from gcnnkit.core.backend import BACKEND_API_VERSION, Backend
from gcnnkit.core.errors import PluginError
from gcnnkit.core.group import GROUP_API_VERSION, Group, GroupAxiomError, check_group_axioms
from gcnnkit.core.limits import check_group_order

#: Version of the data-set plugin contract (:mod:`gcnnkit.run.data.plugins`, docs/data.md).
DATASET_API_VERSION = 1
ENTRY_POINT_GROUPS = {"backend": "gcnnkit.backends", "group": "gcnnkit.groups", "dataset": "gcnnkit.datasets"}
API_VERSIONS = {"backend": BACKEND_API_VERSION, "group": GROUP_API_VERSION, "dataset": DATASET_API_VERSION}
#: What a data-set plugin object must have (the contract is :class:`gcnnkit.run.data.plugins.DatasetSource`).
_DATASET_ATTRIBUTES = ("classes", "channels", "image_size", "load")
AUTOLOAD_ENV = "GCNNKIT_DISABLE_PLUGIN_AUTOLOAD"
PLUGINS_ENV = "GCNNKIT_PLUGINS"
_FAMILY_FIELD = "{N}"
#: Groups up to this order get the full axiom check (associativity is O(|G|³)) when loaded.
_FULL_CHECK_MAX_ORDER = 128


def autoload_disabled() -> bool:
    """True when ``GCNNKIT_DISABLE_PLUGIN_AUTOLOAD`` is ``1``/``true``/``yes``: entry points are ignored."""
    return os.environ.get(AUTOLOAD_ENV, "").strip().lower() in ("1", "true", "yes")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


def plugin_allow_list() -> set[str] | None:
    """The distributions ``GCNNKIT_PLUGINS`` names (normalised, e.g. ``{"native", "gcnnkit-escnn"}``),
    or ``None`` when it is unset or empty."""
    names = {_normalise(n) for n in os.environ.get(PLUGINS_ENV, "").split(",") if n.strip()}
    return names or None


def allowed_distribution(dist_name: str, allow: set[str] | None) -> bool:
    """Whether entry points of ``dist_name`` load under the allow-list (everything without one)."""
    if allow is None:
        return True
    name = _normalise(dist_name)
    return name in allow or (name.startswith("gcnnkit-") and name[len("gcnnkit-") :] in allow)


def discovery_note() -> str | None:
    """One line saying how discovery is restricted by the environment, ``None`` when it is not."""
    allow = plugin_allow_list()
    if allow is not None:
        return f"plugin discovery limited to {PLUGINS_ENV}={os.environ[PLUGINS_ENV].strip()}"
    if autoload_disabled():
        return f"plugin discovery is off ({AUTOLOAD_ENV} is set)"
    return None


def _gcnnkit_version() -> str:
    try:
        return metadata.version("gcnnkit")
    except metadata.PackageNotFoundError:
        return "(not installed)"


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
        """The ``N`` of ``name`` when it matches this family's pattern, else ``None``.

        ``N`` is written in decimal without leading zeros (``C8`` matches ``C{N}``, ``C08`` does not).
        """
        prefix, _, suffix = self.name.partition(_FAMILY_FIELD)
        m = re.fullmatch(re.escape(prefix) + r"(0|[1-9]\d*)" + re.escape(suffix), name)
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
        self._manual: dict[str, list[PluginInfo]] = {kind: [] for kind in ENTRY_POINT_GROUPS}
        self._objects: dict[tuple[str, str], Any] = {}

    # ------------------------------------------------------------ discovery
    def _discover(self) -> dict[str, list[PluginInfo]]:
        if self._infos is None:
            infos: dict[str, list[PluginInfo]] = {kind: [] for kind in ENTRY_POINT_GROUPS}
            allow = plugin_allow_list()
            if not autoload_disabled() or allow is not None:
                for kind, ep_group in ENTRY_POINT_GROUPS.items():
                    seen: set[tuple[str, str, str]] = set()
                    for ep in metadata.entry_points(group=ep_group):
                        dist = getattr(ep, "dist", None)
                        dist_name = dist.metadata["Name"] if dist is not None else "unknown"
                        version = dist.version if dist is not None else "unknown"
                        key = (ep.name, ep.value, dist_name)
                        if key in seen or not allowed_distribution(dist_name, allow):  # seen: twice on sys.path
                            continue
                        seen.add(key)
                        infos[kind].append(PluginInfo(kind, ep.name, ep.value, dist_name, version, loader=ep.load))
            self._infos = infos
        return {kind: self._infos[kind] + self._manual[kind] for kind in ENTRY_POINT_GROUPS}

    def refresh(self) -> None:
        """Forget discovered entry points and loaded objects (e.g. after ``pip install``/``uninstall``)."""
        importlib.invalidate_caches()  # importlib.metadata caches directory listings of sys.path
        self._infos = None
        self._objects.clear()

    def register(self, kind: str, name: str, obj: Any) -> None:
        """Register a backend or group (or group family ``"X{N}"``) in-process, without an entry point."""
        if kind not in ENTRY_POINT_GROUPS:
            raise ValueError(f"kind must be one of {list(ENTRY_POINT_GROUPS)}, got {kind!r}")
        target = f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', type(obj).__name__)}"
        self._manual[kind].append(PluginInfo(kind, name, target, loader=lambda: obj))
        self._forget(kind, name)

    def unregister(self, kind: str, name: str) -> None:
        """Remove an in-process registration."""
        self._manual[kind] = [i for i in self._manual[kind] if i.name != name]
        self._forget(kind, name)

    def _forget(self, kind: str, name: str) -> None:
        if _FAMILY_FIELD in name:  # a family may have built any number of cached names
            probe = PluginInfo(kind, name, "")
            for key in [k for k in self._objects if k[0] == kind and probe.family_match(k[1]) is not None]:
                del self._objects[key]
        self._objects.pop((kind, name), None)

    # --------------------------------------------------------------- lookup
    def names(self, kind: str) -> list[str]:
        """Names (and family patterns) of the plugins of ``kind`` that are installed."""
        return sorted({info.name for info in self._discover()[kind]})

    def _candidates(self, kind: str, name: str) -> tuple[list[PluginInfo], int | None]:
        """Providers of ``name``: exact names first; otherwise the family patterns matching it."""
        infos = self._discover()[kind]
        exact = [i for i in infos if i.name == name and not i.is_family]
        if exact:
            return exact, None
        patterns: dict[str, int] = {}
        for info in infos:
            if info.is_family and (n := info.family_match(name)) is not None:
                patterns.setdefault(info.name, n)
        if len(patterns) > 1:
            providers = " and ".join(f"{i.name!r} from {i.origin}" for i in infos if i.is_family and i.name in patterns)
            raise PluginError(f"{kind} name {name!r} is ambiguous: it matches the families {providers}")
        if patterns:
            ((pattern, n),) = patterns.items()
            return [i for i in infos if i.name == pattern], n
        return [], None

    def resolve(self, kind: str, name: str) -> PluginInfo:
        """The plugin that provides ``name`` (without loading it); :class:`PluginError` if none or two."""
        candidates, _ = self._candidates(kind, name)
        if not candidates:
            installed = ", ".join(self.names(kind)) or "none"
            if plugin_allow_list() is not None:
                hint = f" ({PLUGINS_ENV} is set: only the distributions it names are loaded)"
            elif autoload_disabled():
                hint = f" ({AUTOLOAD_ENV} is set, so entry points are not loaded)"
            else:
                hint = ""
            raise PluginError(f"unknown {kind} {name!r}; installed: {installed}{hint}")
        if len(candidates) > 1:
            origins = " and ".join(f"{c.origin} ({c.target})" for c in candidates)
            raise PluginError(f"{kind} name {candidates[0].name!r} is provided twice: by {origins}; uninstall one")
        return candidates[0]

    def get(self, kind: str, name: str) -> Any:
        """The loaded, validated object for ``name``: a :class:`Backend` or a :class:`Group`."""
        if (kind, name) in self._objects:
            return self._objects[(kind, name)]
        info = self.resolve(kind, name)
        obj = self._load(info, name, info.family_match(name) if info.is_family else None)
        self._objects[(kind, name)] = obj
        return obj

    def _where(self, info: PluginInfo) -> str:
        return f"{info.kind} plugin {info.name!r} ({info.origin}, {info.target})"

    def _load_raw(self, info: PluginInfo) -> Any:
        """Import the entry point's object and check the API version it declares, if any."""
        try:
            with contextlib.redirect_stdout(sys.stderr):  # a print on import must not break --json
                raw = info.loader()
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # a broken plugin (even one calling sys.exit) must not take the others down
            info.error = _describe_failure(exc)
            raise PluginError(f"{self._where(info)} failed to load: {info.error}") from None
        declared = getattr(raw, "api_version", None)
        if declared is not None:  # a factory or class may declare its version before being called
            self._check_version(info, declared)
        return raw

    def _check_version(self, info: PluginInfo, declared: Any) -> None:
        expected = API_VERSIONS[info.kind]
        if declared == expected:
            return
        if declared is None:
            info.error = (
                f"declares no api_version; set api_version={expected} "
                f"(this gcnnkit has {info.kind} API version {expected})"
            )
        else:
            dist = info.distribution or "the plugin"
            info.error = (
                f"was written for {info.kind} API version {declared}, but this gcnnkit "
                f"({_gcnnkit_version()}) has {info.kind} API version {expected}; install a version of "
                f"{dist} written for {info.kind} API version {expected}, or a gcnnkit that has version {declared}"
            )
        raise PluginError(f"{self._where(info)} {info.error}")

    def _load(self, info: PluginInfo, name: str, n: int | None) -> Any:
        where = self._where(info)
        raw = self._load_raw(info)

        def fail(problem: str, sep: str = " ") -> PluginError:
            # A family that cannot build one N (e.g. C0) is not broken as a whole: only exact
            # names record the failure in ``info.error`` (shown by ``gcnnkit plugins``).
            if not info.is_family:
                info.error = problem
            return PluginError(f"{where}{sep}{problem}")

        if n is not None:
            check_group_order(name, n)  # before a family builds C100000's 10^10-entry Cayley table
        try:
            with contextlib.redirect_stdout(sys.stderr):
                obj = self._instantiate(info, raw, n)
        except PluginError as exc:
            raise fail(str(exc), ": ") from exc
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            raise fail(f"failed to build {name!r}: {_describe_failure(exc)}") from None
        self._check_version(info, getattr(obj, "api_version", None))
        if info.kind == "group":
            if obj.name != name:
                raise fail(f"asked for {name!r} but it built a group named {obj.name!r}", ": ")
            problem = _group_problem(obj)
            if problem is not None:
                raise fail(f"built an invalid group {name!r}: {problem}")
        return obj

    @staticmethod
    def _instantiate(info: PluginInfo, raw: Any, n: int | None) -> Any:
        if info.kind == "backend":
            obj = raw() if isinstance(raw, type) else raw
            if not isinstance(obj, Backend):
                raise PluginError(f"expected a gcnnkit.core.backend.Backend, got {type(obj).__name__}")
            return obj
        if info.kind == "dataset":
            obj = raw() if isinstance(raw, type) else raw
            missing = [a for a in _DATASET_ATTRIBUTES if not hasattr(obj, a)]
            if missing:
                raise PluginError(
                    f"a data-set plugin needs {', '.join(_DATASET_ATTRIBUTES)}; {type(obj).__name__} lacks "
                    f"{', '.join(missing)} (see docs/data.md)"
                )
            return obj
        if info.is_family:
            if not callable(raw) or isinstance(raw, Group):
                raise PluginError(f"a group family must be a callable taking N, got {type(raw).__name__}")
            obj = raw(n)
        else:
            obj = raw if isinstance(raw, Group) else raw()
        if not isinstance(obj, Group):
            raise PluginError(f"expected a gcnnkit.core.group.Group, got {type(obj).__name__}")
        return obj

    def report(self) -> list[PluginInfo]:
        """Every plugin, each loaded once so that failures carry their reason in ``error``.

        Families are imported (and their declared ``api_version`` checked) but not called,
        since they stand for infinitely many groups.
        """
        infos = self._discover()
        for kind, items in infos.items():
            for info in items:
                try:
                    if info.is_family:
                        raw = self._load_raw(info)
                        if not callable(raw) or isinstance(raw, Group):
                            info.error = f"a group family must be a callable taking N, got {type(raw).__name__}"
                    else:
                        self.get(kind, info.name)
                except PluginError as exc:
                    info.error = info.error or str(exc)
        return [info for kind in ENTRY_POINT_GROUPS for info in infos[kind]]


def _describe_failure(exc: BaseException) -> str:
    """``TypeName: message`` on one line; ``called sys.exit(CODE)`` for a :class:`SystemExit`."""
    if isinstance(exc, SystemExit):
        return f"called sys.exit({exc.code!r})"
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def _group_problem(group: Group) -> str | None:
    """Why ``group`` is not a valid group (axioms, action, escnn description), or ``None``."""
    try:
        if group.order <= _FULL_CHECK_MAX_ORDER:
            check_group_axioms(group)
        else:  # skip associativity (|G|³ memory); it follows from a faithful homomorphism
            table = group.cayley_table
            if table.shape != (group.order, group.order) or table.min() < 0 or table.max() >= group.order:
                return "the Cayley table must be [|G|, |G|] with entries in 0..|G|-1"
            mats = group.matrices
            if not bool((mats @ mats.transpose(1, 2) - torch.eye(2, dtype=mats.dtype)).abs().max() < 1e-9):
                return "the action matrices are not orthogonal"
            if not bool((mats[table] - mats[:, None] @ mats[None]).abs().max() < 1e-9):
                return "matrix(a·b) != matrix(a) @ matrix(b): the action is not a homomorphism"
            if not bool((table[0] == table.new_tensor(range(group.order))).all()):
                return f"element 0 ({group.element_names[0]}) is not the identity"
    except GroupAxiomError as exc:
        return str(exc)
    except Exception as exc:  # e.g. a Group subclass whose table or matrices cannot be computed
        return f"{type(exc).__name__}: {exc}"
    if group.escnn is not None and not isinstance(group.escnn.get("gspace"), str):
        example = "{'gspace': 'rot2dOnR2', 'N': 8}"
        return f"escnn must be a mapping with a 'gspace' name, e.g. {example}, got {group.escnn}"
    return None


#: The process-wide registry used by the functions below.
REGISTRY = Registry()


def get_backend(name: str) -> Backend:
    """The backend registered as ``name``; :class:`PluginError` lists the installed ones."""
    return REGISTRY.get("backend", name)


def get_group(name: str) -> Group:
    """The group registered as ``name`` (or matched by a family such as ``C{N}``)."""
    return REGISTRY.get("group", name)


def group_provider(name: str) -> PluginInfo:
    """Which plugin provides group ``name`` (exact names win over families), without loading it."""
    return REGISTRY.resolve("group", name)


def backend_names() -> list[str]:
    return REGISTRY.names("backend")


def group_names() -> list[str]:
    return REGISTRY.names("group")


def loadable_backends() -> list[str]:
    """The installed backends that load: those that keep their weights in the transfer format first
    (the reference the others are compared with, see :mod:`gcnnkit.core.backend`), then by name."""
    loaded = []
    for name in backend_names():
        try:
            loaded.append(get_backend(name))
        except PluginError:
            continue
    return [b.name for b in sorted(loaded, key=lambda b: (not b.stores_transfer_format, b.name))]


def register_backend(name: str, backend: Backend | type[Backend]) -> None:
    """Register a backend in this process (no entry point needed), e.g. from a notebook."""
    REGISTRY.register("backend", name, backend)


def register_group(name: str, group: Group | Callable[..., Group]) -> None:
    """Register a group, a zero-argument factory, or (for ``"X{N}"`` names) a factory of ``N``."""
    REGISTRY.register("group", name, group)


def get_dataset_source(name: str) -> Any:
    """The data-set plugin registered as ``name`` (see :mod:`gcnnkit.run.data.plugins`)."""
    return REGISTRY.get("dataset", name)


def dataset_plugin_names() -> list[str]:
    return REGISTRY.names("dataset")


def register_dataset(name: str, source: Any) -> None:
    """Register a data-set source (an object or a class) in this process, without an entry point."""
    REGISTRY.register("dataset", name, source)


def plugin_report() -> list[PluginInfo]:
    """All plugins, loaded, with ``error`` set on those that failed."""
    return REGISTRY.report()


def plugin_distributions() -> dict[str, str]:
    """``{distribution: version}`` of every installed distribution with gcnnkit entry points.

    Ignores ``GCNNKIT_DISABLE_PLUGIN_AUTOLOAD``: it lists what is installed, not what is loaded.
    """
    found: dict[str, str] = {}
    for ep_group in ENTRY_POINT_GROUPS.values():
        for ep in metadata.entry_points(group=ep_group):
            dist = getattr(ep, "dist", None)
            if dist is not None:
                found.setdefault(dist.metadata["Name"], dist.version)
    return dict(sorted(found.items()))


def require_plugins(requirements: Sequence[str] | str, where: str = "required_plugins") -> dict[str, str]:
    """Check that the plugin distributions a config needs are installed, in matching versions.

    Args:
        requirements: PEP 508 strings such as ``"gcnnkit-rotations>=0.1"`` (a single string is
            one requirement). Requirements whose environment marker is false are skipped.
        where: the config key named in error messages.

    Returns:
        ``{distribution: installed version}`` for every requirement checked (record it with a run).

    Raises:
        PluginError: one line naming the first requirement that is malformed, not installed, or
            installed in a version that does not match, and what is installed.
    """
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.version import InvalidVersion, Version

    if isinstance(requirements, str):
        requirements = [requirements]
    if not isinstance(requirements, Sequence) or isinstance(requirements, Mapping):
        raise PluginError(
            f"{where}: expected a list of requirements like 'gcnnkit-rotations>=0.1', got {requirements!r}"
        )
    satisfied: dict[str, str] = {}
    for i, text in enumerate(requirements):
        key = f"{where}[{i}]"
        if not isinstance(text, str):
            raise PluginError(f"{key}: expected a requirement string like 'gcnnkit-rotations>=0.1', got {text!r}")
        try:
            req = Requirement(text)
        except InvalidRequirement as exc:
            detail = str(exc).splitlines()[0]
            raise PluginError(
                f"{key}: {text!r} is not a valid requirement ({detail}); expected e.g. 'gcnnkit-rotations>=0.1'"
            ) from None
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            plugins = ", ".join(f"{d} {v}" for d, v in plugin_distributions().items()) or "none"
            raise PluginError(
                f"{key}: {text!r} is not installed (installed plugin distributions: {plugins}); "
                f"install it with: pip install '{text}'"
            ) from None
        installed = dist.version
        try:
            ok = req.specifier.contains(Version(installed), prereleases=True)
        except InvalidVersion:
            ok = req.specifier.contains(installed, prereleases=True)
        if not ok:
            raise PluginError(
                f"{key}: {text!r} is not satisfied: {req.name} {installed} is installed; "
                f"install a matching version with: pip install '{text}'"
            )
        satisfied[dist.metadata["Name"]] = installed
    return satisfied
