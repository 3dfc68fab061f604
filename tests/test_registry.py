"""Model registry: content names, versions in a store shared by hosts, the served version in Redis, promotion,
rollback, pruning; no torch needed."""

import json
import os
import shutil
import uuid

import pytest
from conftest import test_redis_url

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


def test_versions_promote_rollback_commands(tmp_path, monkeypatch, capsys, redis_prefix):
    from glus_backend.cli import main

    redis, prefix, _ = redis_prefix
    base = _checkpoint(tmp_path / "base", "base")
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "md"))
    monkeypatch.setenv("GLUS_CHECKPOINT", str(base))
    monkeypatch.setenv("REDIS_URL", test_redis_url())
    monkeypatch.setenv("GLUS_QUEUE_PREFIX", prefix)
    registry = ModelRegistry(tmp_path / "md", default_checkpoint=base, redis=redis, prefix=prefix)
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
    assert redis.get(f"{prefix}:model:current") is None  # the rollback to the base is shared too


def _delta(folder, parent, tag):
    """A delta version folder as training writes it (the registry reads only its JSON and names its bytes)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"name": "glus-tiny"}))
    (folder / "delta.json").write_text(json.dumps({"format": "glus-delta/1", "parent": parent, "full": []}))
    (folder / "delta.safetensors").write_bytes(tag.encode() * 100)
    (folder / "train.log").write_text(f"not content {uuid.uuid4()}")
    return folder


def test_names_come_from_content_not_from_paths_or_times(tmp_path):
    one = _checkpoint(tmp_path / "a", "same")
    two = shutil.copytree(one, tmp_path / "b")
    os.utime(two / "model.safetensors", (1, 1))
    (two / "MODEL_CARD.md").write_text("notes are not content")
    assert version_of(one) == version_of(two)
    (two / "model.safetensors").write_bytes(b"other" * 10)
    assert version_of(one) != version_of(two)
    digests = tmp_path / "digests.json"
    name = version_of(one, digests)
    cached = json.loads(digests.read_text())[str(one.resolve())]
    cached["digest"] = "f" * 64  # a cached digest is used while sizes and times are unchanged ...
    digests.write_text(json.dumps({str(one.resolve()): cached}))
    assert version_of(one, digests) == "glus-tiny-ffffffff"
    (one / "model.safetensors").write_bytes(b"new" * 10)  # ... and recomputed once they change
    assert version_of(one, digests) not in (name, "glus-tiny-ffffffff")


def test_two_hosts_share_the_served_version_through_redis_and_a_store(tmp_path, redis_prefix):
    """Hosts with their own MODEL_DIR and their own copy of the base, one Redis, a store both read (an fsspec
    in-memory store here, so each host fetches into its own cache)."""
    redis, prefix, _ = redis_prefix
    store = f"memory://glustest-{uuid.uuid4().hex[:8]}"
    base_a = _checkpoint(tmp_path / "a" / "base", "base")
    base_b = shutil.copytree(base_a, tmp_path / "b" / "base")
    host_a = ModelRegistry(tmp_path / "a" / "md", base_a, store, redis, prefix)
    host_b = ModelRegistry(tmp_path / "b" / "md", base_b, store, redis, prefix)
    assert host_a.base().version == host_b.base().version == host_b.current_name()
    first = host_a.register(_delta(tmp_path / "run1", host_a.base().version, "one"), {"gate": {"promoted": True}})
    second = host_a.register(_delta(tmp_path / "run2", first.version, "two"), {})
    host_a.promote(second.version)
    assert host_b.current_name() == second.version == redis.get(f"{prefix}:model:current").decode()
    served = host_b.current()  # the chain, fetched into host B's cache
    assert served.base == base_b and [d.name for d in served.deltas] == [first.version, second.version]
    assert all(d.parent == tmp_path / "b" / "md" / "cache" / "versions" for d in served.deltas)
    redis.delete(f"{prefix}:model:current")  # Redis flushed: the store's CURRENT still says, and re-shares it
    assert host_b.current_name() == second.version and redis.get(f"{prefix}:model:current") is not None
    orphan = host_a.register(_delta(tmp_path / "run3", "glus-tiny-00000000", "three"), {})
    with pytest.raises(ValueError, match="neither registered nor this host's base"):
        host_b.resolve(orphan.version)
    with pytest.raises(ValueError, match="neither registered"):
        host_a.promote(orphan.version)
    assert host_b.current_name() == second.version  # a version that cannot load here is never served


def test_prune_deletes_versions_never_served(tmp_path):
    registry = ModelRegistry(tmp_path / "md", _checkpoint(tmp_path / "base", "base"))
    base = registry.base().version
    kept_parent = registry.register(_delta(tmp_path / "r1", base, "p"), {})
    served = registry.register(_delta(tmp_path / "r2", kept_parent.version, "s"), {})
    refused = registry.register(_delta(tmp_path / "r3", base, "x"), {"gate": {"promoted": False}})
    rolled_back = registry.register(_delta(tmp_path / "r4", base, "y"), {})
    registry.promote(rolled_back.version)
    registry.promote(served.version)
    assert [r.version for r in registry.prunable()] == [refused.version]
    assert [name for name, _ in registry.prune(dry_run=True)] == [refused.version]
    assert refused.path.is_dir()
    (name, size), = registry.prune()
    assert name == refused.version and size > 0 and not refused.path.exists()
    assert {r.version for r in registry.versions()} == {kept_parent.version, served.version, rolled_back.version}
