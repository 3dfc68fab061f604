"""Model registry: versions, promotion (atomic CURRENT + history) and rollback; no torch needed."""

import json

import pytest

from glus_backend.registry import ModelRegistry, version_of


def _checkpoint(folder, tag):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"name": "glus-tiny", "tag": tag}))
    (folder / "model.safetensors").write_bytes(tag.encode() * 10)
    return folder


def test_register_promote_rollback_cycle(tmp_path):
    base = _checkpoint(tmp_path / "base", "base")
    registry = ModelRegistry(tmp_path / "model_dir", default_checkpoint=base)
    assert registry.current().source == "checkpoint" and registry.versions() == []
    first = registry.register(_checkpoint(tmp_path / "run1", "one"), {"metrics": {"candidate_jf": 0.5}})
    assert registry.current().source == "checkpoint"  # registered is not promoted
    assert first.path.parent == registry.versions_dir and not (tmp_path / "run1").exists()
    assert json.loads((first.path / "version.json").read_text())["metrics"]["candidate_jf"] == 0.5
    registry.promote(first.version)
    assert registry.current().version == first.version and registry.current().source == "registry"
    second = registry.register(_checkpoint(tmp_path / "run2", "two"), {})
    registry.promote(second.version)
    assert [r.version for r in registry.versions()] == [first.version, second.version]
    assert registry.rollback().version == first.version  # undo the last promotion
    assert registry.rollback(version_of(base)).version == version_of(base)  # back to the configured checkpoint
    assert registry.current().source == "checkpoint"
    history = [json.loads(line) for line in registry.history_file.read_text().splitlines()]
    assert [h["reason"] for h in history] == ["promoted", "promoted", "rollback", "rollback"]


def test_bad_versions_are_refused(tmp_path):
    registry = ModelRegistry(tmp_path / "md", default_checkpoint=_checkpoint(tmp_path / "base", "b"))
    with pytest.raises(ValueError, match="nothing to roll back"):
        registry.rollback()
    with pytest.raises(ValueError, match="unknown version"):
        registry.promote("glus-tiny-deadbeef")
    with pytest.raises(ValueError, match="unknown version"):
        registry.rollback("glus-tiny-deadbeef")
    record = registry.register(_checkpoint(tmp_path / "r", "x"), {})
    registry.promote(record.version)
    with pytest.raises(ValueError, match="unknown version"):
        registry.rollback("glus-tiny-deadbeef")
    assert registry.current().version == record.version  # a bad rollback changes nothing
    with pytest.raises(ValueError, match="already registered"):
        registry.register(_checkpoint(tmp_path / "r2", "x"), {})
    assert record.version.startswith("glus-tiny-")


def test_versions_promote_rollback_commands(tmp_path, monkeypatch, capsys):
    from glus_backend.cli import main

    base = _checkpoint(tmp_path / "base", "base")
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "md"))
    monkeypatch.setenv("GLUS_CHECKPOINT", str(base))
    registry = ModelRegistry(tmp_path / "md", default_checkpoint=base)
    record = registry.register(
        _checkpoint(tmp_path / "run", "r"),
        {"parent": version_of(base), "gate": {"candidate_jf": 0.61, "current_jf": 0.42, "promoted": True}},
    )
    assert main(["versions"]) == 0
    out = capsys.readouterr().out
    assert "no trained versions" not in out and record.version in out and "0.610 vs 0.420" in out
    assert main(["promote", record.version]) == 0 and registry.current().version == record.version
    assert main(["promote", "nope"]) == 2
    assert main(["rollback"]) == 0 and registry.current().version == version_of(base)
