"""Plugin discovery: entry points of the installed native plugin, in-process registration,
families, the autoload switch, and clear errors for broken / incompatible / duplicate plugins
built as fake distributions on a temporary ``sys.path`` entry."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
from _helpers import NATIVE_GROUPS
from gcnnkit_native.backend import NativeBackend

from gcnnkit.core.errors import GcnnkitError, PluginError
from gcnnkit.core.group import GROUP_API_VERSION, cyclic_group, dihedral_group
from gcnnkit.core.registry import (
    AUTOLOAD_ENV,
    PLUGINS_ENV,
    REGISTRY,
    backend_names,
    get_backend,
    get_group,
    group_names,
    plugin_report,
    register_backend,
    register_group,
)


@pytest.fixture
def registry():
    """Restore the process-wide registry (in-process registrations and caches) after the test."""
    manual = {kind: list(items) for kind, items in REGISTRY._manual.items()}
    yield REGISTRY
    REGISTRY._manual.clear()
    REGISTRY._manual.update(manual)
    REGISTRY.refresh()  # lazily re-discovers, after monkeypatch has restored sys.path / environ


@pytest.fixture
def fake_dists(tmp_path, monkeypatch, registry):
    """``make(dist, version, module, source, entry_points)`` writes a fake installed distribution."""
    modules: list[str] = []

    def make(dist: str, version: str, module: str, source: str, entry_points: dict[str, dict[str, str]]) -> None:
        pkg = tmp_path / module
        pkg.mkdir()
        (pkg / "__init__.py").write_text(textwrap.dedent(source))
        info = tmp_path / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        lines = []
        for section, eps in entry_points.items():
            lines.append(f"[{section}]")
            lines += [f"{name} = {target}" for name, target in eps.items()]
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        modules.append(module)
        registry.refresh()

    monkeypatch.syspath_prepend(str(tmp_path))
    yield make
    for module in modules:
        sys.modules.pop(module, None)


def _info(name, kind="group"):
    matches = [i for i in plugin_report() if i.name == name and i.kind == kind]
    assert matches, name
    return matches


# --------------------------------------------------------------------------- native plugin
def test_native_plugin_is_discovered(registry):
    registry.refresh()
    assert "native" in backend_names()
    assert set(NATIVE_GROUPS) <= set(group_names())
    backend = get_backend("native")
    assert isinstance(backend, NativeBackend) and get_backend("native") is backend  # loaded once
    for name in NATIVE_GROUPS:
        group = get_group(name)
        assert group.name == name and group.api_version == GROUP_API_VERSION
    infos = {(i.kind, i.name): i for i in plugin_report()}
    for key in [("backend", "native")] + [("group", n) for n in NATIVE_GROUPS]:
        info = infos[key]
        assert info.distribution == "gcnnkit-native" and info.version == "0.1.0" and info.error is None
        assert info.origin == "gcnnkit-native 0.1.0"
        assert info.to_dict()["target"].startswith("gcnnkit_native.")


def test_unknown_names_list_the_installed_ones(registry):
    with pytest.raises(PluginError) as info:
        get_group("Q7")
    msg = str(info.value)
    assert "unknown group 'Q7'" in msg and all(n in msg for n in NATIVE_GROUPS) and "\n" not in msg
    with pytest.raises(PluginError, match=r"unknown backend 'torchgcnn'; installed: .*native"):
        get_backend("torchgcnn")
    assert issubclass(PluginError, GcnnkitError)


def test_autoload_can_be_disabled(registry, monkeypatch):
    monkeypatch.setenv(AUTOLOAD_ENV, "1")
    registry.refresh()
    assert backend_names() == [] and "C4" not in group_names()
    with pytest.raises(PluginError, match=f"unknown group 'C4'; installed: none.*{AUTOLOAD_ENV} is set"):
        get_group("C4")
    register_group("Z3", lambda: cyclic_group(3, name="Z3"))  # in-process registration still works
    assert get_group("Z3").order == 3
    assert group_names() == ["Z3"]


def test_autoload_switch_only_mentioned_when_it_is_on(registry, monkeypatch):
    monkeypatch.setenv(AUTOLOAD_ENV, "0")  # set, but not to a true value: entry points still load
    registry.refresh()
    assert "C4" in group_names()
    with pytest.raises(PluginError) as info:
        get_group("Q7")
    assert AUTOLOAD_ENV not in str(info.value)


# --------------------------------------------------------------------------- in-process registration
class _ToyBackend(NativeBackend):
    name = "toy"


def test_register_backend_class_or_instance(registry):
    register_backend("toy", _ToyBackend)
    assert isinstance(get_backend("toy"), _ToyBackend)
    assert "toy" in backend_names()
    info = _info("toy", "backend")[0]
    assert info.origin == "registered in-process" and info.error is None
    registry.unregister("backend", "toy")
    register_backend("toy2", _ToyBackend())
    assert isinstance(get_backend("toy2"), _ToyBackend)
    registry.unregister("backend", "toy2")
    with pytest.raises(PluginError, match="unknown backend 'toy'"):
        get_backend("toy")


def test_register_group_instance_factory_and_checks(registry):
    register_group("C3", cyclic_group(3))
    register_group("D3", lambda: dihedral_group(3))
    assert get_group("C3").order == 3 and get_group("D3").order == 6
    register_group("Wrong", cyclic_group(5))  # a group called C5 registered as 'Wrong'
    with pytest.raises(PluginError, match="asked for 'Wrong' but it built a group named 'C5'"):
        get_group("Wrong")
    register_group("NotAGroup", lambda: 42)
    with pytest.raises(PluginError, match="expected a gcnnkit.core.group.Group, got int"):
        get_group("NotAGroup")
    register_backend("NotABackend", object())
    with pytest.raises(PluginError, match="expected a gcnnkit.core.backend.Backend, got object"):
        get_backend("NotABackend")


def test_registering_an_installed_name_is_a_duplicate(registry):
    get_group("C4")  # cached first: registering must invalidate the cache
    register_group("C4", cyclic_group(4))
    with pytest.raises(PluginError) as info:
        get_group("C4")
    msg = str(info.value)
    assert "group name 'C4' is provided twice" in msg
    assert "gcnnkit-native 0.1.0 (gcnnkit_native.groups:C4)" in msg and "registered in-process" in msg
    assert get_group("C2").order == 2  # the others keep working


def test_group_families(registry):
    register_group("X{N}", lambda n: cyclic_group(n, name=f"X{n}"))
    assert "X{N}" in group_names()
    for n in (1, 6, 12):
        group = get_group(f"X{n}")
        assert group.order == n and group.name == f"X{n}"
    for bad in ("X", "Xa", "X6a", "x6", "YX6"):
        with pytest.raises(PluginError, match=f"unknown group '{bad}'"):
            get_group(bad)
    register_group("Y{N}m", lambda n: dihedral_group(n, name=f"Y{n}m"))  # a suffix after the field
    assert get_group("Y3m").order == 6
    register_group("Bad{N}", lambda n: cyclic_group(n))  # builds C<n>, not Bad<n>
    with pytest.raises(PluginError, match="asked for 'Bad4' but it built a group named 'C4'"):
        get_group("Bad4")
    register_group("Const{N}", cyclic_group(3, name="Const3"))  # not callable
    with pytest.raises(PluginError, match="a group family must be a callable taking N"):
        get_group("Const3")
    assert all(i.error is None for i in plugin_report() if i.name == "X{N}")  # families are not loaded


def test_unregistering_a_family_forgets_its_members(registry):
    register_group("X{N}", lambda n: cyclic_group(n, name=f"X{n}"))
    assert get_group("X6").order == 6
    registry.unregister("group", "X{N}")
    with pytest.raises(PluginError, match="unknown group 'X6'"):
        get_group("X6")
    register_group("X{N}", lambda n: dihedral_group(n, name=f"X{n}"))  # re-registered differently
    assert get_group("X6").order == 12


def test_an_exact_name_wins_over_a_family(registry):
    register_group("X{N}", lambda n: cyclic_group(n, name=f"X{n}"))
    register_group("X4", lambda: dihedral_group(2, name="X4"))
    assert get_group("X4").element_names == ("e", "r1", "f", "r1f")
    assert get_group("X5").order == 5


def test_register_rejects_unknown_kinds(registry):
    with pytest.raises(ValueError, match="kind must be one of"):
        registry.register("layer", "x", object())


# --------------------------------------------------------------------------- fake distributions
GROUPS = "gcnnkit.groups"
BACKENDS = "gcnnkit.backends"


def test_entry_point_plugins_from_another_distribution(fake_dists):
    fake_dists(
        "fake-rot",
        "0.2",
        "fakepkg_rot",
        """
        from gcnnkit.core.group import cyclic_group
        def C3():
            return cyclic_group(3)
        def cyclic(n):
            return cyclic_group(n, name=f"R{n}")
        """,
        {GROUPS: {"C3": "fakepkg_rot:C3", "R{N}": "fakepkg_rot:cyclic"}},
    )
    assert {"C3", "R{N}"} <= set(group_names())
    assert get_group("C3").order == 3 and get_group("R8").order == 8
    info = _info("C3")[0]
    assert info.distribution == "fake-rot" and info.version == "0.2" and info.error is None
    assert get_group("C4").order == 4  # native still there


def test_broken_plugin_is_reported_and_others_keep_working(fake_dists):
    fake_dists(
        "fake-broken",
        "0.1",
        "fakepkg_broken",
        """
        raise RuntimeError("boom: missing dependency")
        """,
        {GROUPS: {"Broken": "fakepkg_broken:G"}, BACKENDS: {"brokenbe": "fakepkg_broken:B"}},
    )
    assert "Broken" in group_names()  # listed without importing it (lazy)
    assert "fakepkg_broken" not in sys.modules
    with pytest.raises(PluginError) as info:
        get_group("Broken")
    msg = str(info.value)
    for fragment in (
        "group plugin 'Broken'",
        "fake-broken 0.1",
        "fakepkg_broken:G",
        "failed to load",
        "RuntimeError: boom: missing dependency",
    ):
        assert fragment in msg, (fragment, msg)
    with pytest.raises(PluginError, match="backend plugin 'brokenbe' .*fake-broken 0.1.*failed to load"):
        get_backend("brokenbe")
    assert get_group("C4").order == 4 and isinstance(get_backend("native"), NativeBackend)
    report = {(i.kind, i.name): i for i in plugin_report()}
    assert "boom" in report[("group", "Broken")].error and "boom" in report[("backend", "brokenbe")].error
    assert report[("group", "C4")].error is None and report[("backend", "native")].error is None


def test_api_version_mismatch_is_a_clear_error(fake_dists):
    fake_dists(
        "fake-old",
        "0.3",
        "fakepkg_old",
        """
        from gcnnkit.core.group import Group
        from gcnnkit_native.backend import NativeBackend

        def Old():
            return Group("Old", ["e"], [[[1.0, 0.0], [0.0, 1.0]]], api_version=99)

        class OldBackend(NativeBackend):
            api_version = 0

        class NoVersion(NativeBackend):
            api_version = None
        """,
        {
            GROUPS: {"Old": "fakepkg_old:Old"},
            BACKENDS: {"oldbe": "fakepkg_old:OldBackend", "nover": "fakepkg_old:NoVersion"},
        },
    )
    with pytest.raises(PluginError) as info:
        get_group("Old")
    msg = str(info.value)
    for fragment in (
        "group plugin 'Old'",
        "fake-old 0.3",
        "written for group API version 99",
        f"has group API version {GROUP_API_VERSION}",
    ):
        assert fragment in msg, (fragment, msg)
    assert "\n" not in msg
    with pytest.raises(PluginError, match=r"'oldbe' \(fake-old 0.3.*written for backend API version 0\b.*has backend"):
        get_backend("oldbe")
    with pytest.raises(PluginError, match=r"'nover' \(fake-old 0.3.*declares no api_version"):
        get_backend("nover")
    assert get_group("D4").order == 8
    errors = {i.name: i.error for i in plugin_report()}
    assert "99" in errors["Old"] and "declares no api_version" in errors["nover"] and errors["D4"] is None


def test_duplicate_name_across_two_distributions(fake_dists):
    source = """
        from gcnnkit.core.group import cyclic_group
        def Dup():
            return cyclic_group(3, name="Dup")
        """
    fake_dists("fake-a", "1.0", "fakepkg_a", source, {GROUPS: {"Dup": "fakepkg_a:Dup", "C4": "fakepkg_a:Dup"}})
    fake_dists("fake-b", "2.5", "fakepkg_b", source, {GROUPS: {"Dup": "fakepkg_b:Dup"}})
    with pytest.raises(PluginError) as info:
        get_group("Dup")
    msg = str(info.value)
    for fragment in (
        "group name 'Dup' is provided twice",
        "fake-a 1.0 (fakepkg_a:Dup)",
        "fake-b 2.5 (fakepkg_b:Dup)",
        "uninstall one",
    ):
        assert fragment in msg, (fragment, msg)
    # a fake plugin claiming native's C4 makes C4 ambiguous, nothing else
    with pytest.raises(PluginError, match=r"'C4' is provided twice") as info:
        get_group("C4")
    assert "gcnnkit-native 0.1.0" in str(info.value) and "fake-a 1.0" in str(info.value)
    assert get_group("C2").order == 2 and get_group("D4").order == 8
    report = plugin_report()
    dup_errors = [i.error for i in report if i.name == "Dup"]
    assert len(dup_errors) == 2 and all("provided twice" in e for e in dup_errors)


def test_plugin_that_builds_the_wrong_type_or_raises_when_called(fake_dists):
    fake_dists(
        "fake-odd",
        "0.1",
        "fakepkg_odd",
        """
        def NotGroup():
            return "C4"
        def Raises():
            raise ValueError("bad N")
        def fam(n):
            raise ValueError(f"cannot build {n}")
        """,
        {GROUPS: {"NotGroup": "fakepkg_odd:NotGroup", "Raises": "fakepkg_odd:Raises", "F{N}": "fakepkg_odd:fam"}},
    )
    with pytest.raises(PluginError, match=r"'NotGroup' \(fake-odd 0\.1.*expected a gcnnkit.core.group.Group, got str"):
        get_group("NotGroup")
    with pytest.raises(PluginError, match=r"'Raises'.*failed to build 'Raises': ValueError: bad N"):
        get_group("Raises")
    with pytest.raises(PluginError, match=r"'F\{N\}'.*failed to build 'F7': ValueError: cannot build 7"):
        get_group("F7")


def test_refresh_picks_up_newly_installed_plugins(fake_dists, tmp_path):
    assert "Late" not in group_names()
    fake_dists(
        "fake-late",
        "0.1",
        "fakepkg_late",
        "from gcnnkit.core.group import cyclic_group\nLate = cyclic_group(2, name='Late')\n",
        {GROUPS: {"Late": "fakepkg_late:Late"}},
    )  # calls REGISTRY.refresh()
    assert get_group("Late").order == 2  # a Group instance as the entry point object works too
    assert Path(tmp_path, "fakepkg_late", "__init__.py").exists()


def test_plugin_that_exits_or_prints_on_import_is_isolated(fake_dists, capsys):
    fake_dists(
        "fake-exits",
        "0.1",
        "fakepkg_exits",
        """
        import sys
        sys.exit(3)
        """,
        {GROUPS: {"Exits": "fakepkg_exits:G"}},
    )
    fake_dists(
        "fake-prints",
        "0.1",
        "fakepkg_prints",
        """
        print("hello from a chatty plugin")
        from gcnnkit_native.groups import C4 as G
        """,
        {BACKENDS: {"chatty": "fakepkg_prints:G"}},
    )
    with pytest.raises(PluginError, match=r"group plugin 'Exits'.*failed to load: called sys.exit\(3\)"):
        get_group("Exits")
    report = {(i.kind, i.name): i for i in plugin_report()}  # neither ends the report
    assert report[("group", "Exits")].error == "called sys.exit(3)"
    assert "Backend" in report[("backend", "chatty")].error  # a group is not a backend
    assert report[("backend", "native")].error is None
    out = capsys.readouterr()
    assert "hello from a chatty plugin" not in out.out and "hello from a chatty plugin" in out.err


def test_plugins_json_survives_chatty_and_exiting_plugins(fake_dists):
    import json

    from click.testing import CliRunner

    from gcnnkit.cli import main

    fake_dists("fake-exits", "0.1", "fakepkg_exits2", "import sys\nsys.exit(0)\n", {GROUPS: {"Ex": "fakepkg_exits2:G"}})
    fake_dists("fake-prints", "0.1", "fakepkg_prints2", "print('noise')\n", {GROUPS: {"Pr": "fakepkg_prints2:G"}})
    result = CliRunner().invoke(main, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    errors = {g["name"]: g["error"] for g in data["groups"]}
    assert errors["Ex"] == "called sys.exit(0)" and "AttributeError" in errors["Pr"] and errors["C4"] is None
    plain = CliRunner().invoke(main, ["plugins"])
    assert plain.exit_code == 0 and "FAILED: called sys.exit(0)" in plain.stdout


@pytest.mark.parametrize("allow", ["native", "gcnnkit-native", "GCNNKIT_native"])
def test_allow_list_keeps_named_distributions_even_without_autoload(registry, monkeypatch, allow):
    monkeypatch.setenv(AUTOLOAD_ENV, "1")
    monkeypatch.setenv(PLUGINS_ENV, allow)
    registry.refresh()
    assert isinstance(get_backend("native"), NativeBackend) and get_group("C4").order == 4
    with pytest.raises(PluginError, match=f"unknown backend 'escnn'; installed: native .*{PLUGINS_ENV} is set"):
        get_backend("escnn")


def test_allow_list_drops_other_distributions(fake_dists, monkeypatch, registry):
    fake_dists("fake-other", "0.1", "fakepkg_other", "raise SystemExit('no')\n", {GROUPS: {"Other": "fakepkg_other:G"}})
    monkeypatch.setenv(PLUGINS_ENV, "native, escnn")
    registry.refresh()
    assert "Other" not in group_names() and "C4" in group_names()
    assert all(i.origin.startswith(("gcnnkit-native", "gcnnkit-escnn")) for i in plugin_report())
