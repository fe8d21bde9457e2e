"""The PE registry: the real file loads; every kind of bad entry fails naming the entry."""

import pytest
import yaml

from stripes.pe import PositionalEncoding, RegistryError, build_pe, load_registry
from stripes.pe.registry import DEFAULT_REGISTRY

GOOD = {"class": "stripes.pe.rope.RoPE", "kwargs": {"learnable": True}, "description": "x", "reference": "y"}


def test_project_registry_loads_and_builds():
    reg = load_registry(DEFAULT_REGISTRY)
    assert {"nope", "rope_a", "rope_b", "rope_c", "spe", "fstripe", "fstripe1", "ropepool", "s_srpe"} <= set(reg)
    for entry in reg.values():
        assert issubclass(entry.cls, PositionalEncoding)
    pe = build_pe("ropepool", n_heads=4, head_dim=128, context_dim=12, registry=reg)
    assert pe.d_in == 64


def test_load_from_file(tmp_path):
    path = tmp_path / "pe.yaml"
    path.write_text(yaml.safe_dump({"mine": GOOD}))
    assert load_registry(path)["mine"].kwargs == {"learnable": True}


@pytest.mark.parametrize("name,entry,match", [
    ("Bad-Name", GOOD, "invalid name"),
    ("two__underscores", GOOD, "invalid name"),
    ("missing_class", {k: v for k, v in GOOD.items() if k != "class"}, "missing 'class'"),
    ("outside", {**GOOD, "class": "os.system"}, "outside the allow-listed prefix"),
    ("sneaky", {**GOOD, "class": "stripes.pe..os.system"}, "outside the allow-listed prefix"),
    ("no_module", {**GOOD, "class": "stripes.pe.nosuch.Foo"}, "cannot import module"),
    ("no_class", {**GOOD, "class": "stripes.pe.rope.NoSuch"}, "has no class 'NoSuch'"),
    ("not_pe", {**GOOD, "class": "stripes.pe.rope.RotaryAngles"}, "not a subclass"),
    ("unknown_kwarg", {**GOOD, "kwargs": {"colour": 1}}, "do not bind"),
    ("structural_kwarg", {**GOOD, "kwargs": {"n_heads": 2}}, "structural"),
    ("extra_key", {**GOOD, "extra": 1}, "schema violation"),
    ("no_description", {k: v for k, v in GOOD.items() if k != "description"}, "schema violation"),
])
def test_bad_entries_raise_naming_the_entry(name, entry, match):
    with pytest.raises(RegistryError, match=match) as err:
        load_registry(data={"fine": GOOD, name: entry})
    assert repr(name) in str(err.value)


def test_missing_required_kwarg(monkeypatch):
    import stripes.pe.rope as rope

    class NeedsArg(rope.RoPE):
        def __init__(self, *, must: int, **kw):
            super().__init__(**kw)

    monkeypatch.setattr(rope, "NeedsArg", NeedsArg, raising=False)
    entry = {**GOOD, "class": "stripes.pe.rope.NeedsArg", "kwargs": {}}
    with pytest.raises(RegistryError, match="'needs_must'.*do not bind.*must"):
        load_registry(data={"needs_must": entry})
    assert load_registry(data={"needs_must": {**entry, "kwargs": {"must": 1}}})


def test_unknown_name_and_unreadable_file(tmp_path):
    with pytest.raises(RegistryError, match="unknown PE 'nosuch'"):
        build_pe("nosuch", n_heads=1, head_dim=2, context_dim=1)
    with pytest.raises(RegistryError, match="cannot read"):
        load_registry(tmp_path / "absent.yaml")


def test_packaged_registry_is_a_package_resource():
    """The default registry ships inside the package (no checkout needed), next to its schema."""
    from stripes.pe.registry import merged_entries
    from stripes.schema import schema_file

    assert "stripes" in str(DEFAULT_REGISTRY) and "resources" in str(DEFAULT_REGISTRY)
    assert schema_file("pe").is_file()
    assert merged_entries() == yaml.safe_load(DEFAULT_REGISTRY.read_text())


def test_env_registry_is_merged_over_the_packaged_one(tmp_path, monkeypatch):
    path = tmp_path / "pe.yaml"
    path.write_text(yaml.safe_dump({"mine": GOOD, "rope_a": {**GOOD, "description": "replaced"}}))
    monkeypatch.setenv("STRIPES_PE_REGISTRY", str(path))
    reg = load_registry()
    assert reg["mine"].kwargs == {"learnable": True} and reg["rope_a"].description == "replaced"
    assert "ropepool" in reg  # the packaged entries stay
    path.write_text("# comments only: adds nothing\n")
    assert set(load_registry()) == set(load_registry(DEFAULT_REGISTRY))
