"""Registry recovery paths the other tests did not reach, found by the mutation run (bench/mutation.py, issue 18).

The REAL registry on the session's MLflow server (cheap empty runs, as in tests/integration/test_registry.py, whose
fixtures this file uses). Each test names the behaviour it checks.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from mlcd.registry.tags import TAG_ROLLBACK_EVIDENCE, TAG_ROLLBACK_REASON, TAG_TRAIN_FINGERPRINT
from mlcd.registry.task import tag_fingerprint, trained_version
from tests.integration import test_registry as _base

pytestmark = pytest.mark.integration

moves, experiment = _base.moves, _base.experiment  # the same fixtures: a fresh model name, an experiment
_versions = _base._versions


def _tags(registry: Any, version: str) -> dict[str, str]:
    return dict(registry.client.get_model_version(registry.model_name, version).tags)


def test_a_promotion_interrupted_after_its_commit_is_undone_with_previous_restored(moves: Any, experiment: str) -> None:
    registry = moves
    v1, v2, v3 = _versions(registry, 3, experiment)
    registry.bootstrap_champion(v1, actor="a")
    registry.start_canary(v2, actor="a", reason="gate passed")
    registry.promote(v2, actor="a", reason="passed")
    registry.start_canary(v3, actor="a", reason="gate passed")
    # What promote(v3) leaves when it dies right after its commit (champion moved, records not yet):
    registry.record_event(v3, "promote_started", {"old_champion": v2, "old_previous": v1}, actor="a")
    registry.set_alias("previous", v2, expected=v1)
    registry.set_alias("champion", v3, expected=v2)
    rec = registry.rollback(v3, "broke in its bake", {"checks": ["class_distribution"]}, actor="guard")
    assert rec.state.value == "rolled_back"
    assert registry.aliases() == {"champion": v2, "previous": v1}  # both back as they were before v3
    assert registry.get_state(v2).state.value == "champion"
    tags = _tags(registry, v3)
    assert tags[TAG_ROLLBACK_REASON] == "broke in its bake"
    assert json.loads(tags[TAG_ROLLBACK_EVIDENCE]) == {"checks": ["class_distribution"]}


def test_undoing_an_interrupted_first_promotion_leaves_no_previous(moves: Any, experiment: str) -> None:
    registry = moves
    v1, v2 = _versions(registry, 2, experiment)
    registry.bootstrap_champion(v1, actor="a")
    registry.start_canary(v2, actor="a", reason="gate passed")
    registry.record_event(v2, "promote_started", {"old_champion": v1, "old_previous": None}, actor="a")
    registry.set_alias("previous", v1, expected=None)
    registry.set_alias("champion", v2, expected=v1)
    registry.rollback(v2, "failed", None, actor="guard")
    assert registry.aliases() == {"champion": v1}
    assert registry.status()["consistent"]


def test_a_rolled_back_canary_keeps_its_reason_and_evidence_and_a_second_rollback_changes_nothing(
    moves: Any, experiment: str
) -> None:
    registry = moves
    v1, v2 = _versions(registry, 2, experiment)
    registry.bootstrap_champion(v1, actor="a")
    registry.start_canary(v2, actor="a", reason="gate passed")
    registry.rollback(v2, "errors up", {"errors": 12}, actor="guard")
    again = registry.rollback(v2, "second try", {"errors": 99}, actor="guard")
    assert again.state.value == "rolled_back"
    tags = _tags(registry, v2)
    assert tags[TAG_ROLLBACK_REASON] == "errors up" and json.loads(tags[TAG_ROLLBACK_EVIDENCE]) == {"errors": 12}
    assert registry.aliases() == {"champion": v1}


def test_a_training_fingerprint_finds_the_version_it_made_and_none_is_not_recorded(
    moves: Any, experiment: str
) -> None:
    registry = moves
    v1, v2 = _versions(registry, 2, experiment)
    tag_fingerprint(registry, v1, "fp-a")
    tag_fingerprint(registry, v2, None)
    assert TAG_TRAIN_FINGERPRINT not in _tags(registry, v2)
    found = trained_version(registry, "fp-a")
    assert found is not None and str(found.version) == v1
    assert trained_version(registry, "fp-b") is None
    tag_fingerprint(registry, v2, "fp-a")
    newest = trained_version(registry, "fp-a")
    assert newest is not None and str(newest.version) == v2  # the newest version with that fingerprint


def test_a_champion_alias_deleted_by_hand_is_found_and_put_back_by_reconcile(moves: Any, experiment: str) -> None:
    registry = moves
    (v1,) = _versions(registry, 1, experiment)
    registry.bootstrap_champion(v1, actor="a")
    registry.delete_alias("champion", v1)  # no alias left at all: the records must still be read
    assert [f["violation"] for f in registry.violations()] == ["no_champion"]
    out = registry.reconcile()
    assert out["consistent"] is True and out["left"] == []
    assert registry.aliases() == {"champion": v1}
    again = registry.reconcile()
    assert again == {"repairs": [], "left": [], "consistent": True}


def test_reconcile_completes_a_champion_rollback_interrupted_after_the_alias_moved(moves: Any, experiment: str) -> None:
    registry = moves
    v1, v2 = _versions(registry, 2, experiment)
    registry.bootstrap_champion(v1, actor="a")
    registry.start_canary(v2, actor="a", reason="gate passed")
    registry.promote(v2, actor="a", reason="passed")
    # A bake-period rollback that died after giving champion back and recording v1, before recording v2:
    registry.record_event(v2, "rollback_started", {"restore": v1}, actor="guard")
    registry.set_alias("champion", v1, expected=v2)
    registry.delete_alias("previous", v1)
    registry.record_transition(v1, "champion", "restored by rollback", "guard")
    assert "many_champions" in [f["violation"] for f in registry.violations()]
    out = registry.reconcile()
    assert out["consistent"] is True
    assert any("completing its rollback" in r["line"] for r in out["repairs"])
    assert registry.get_state(v2).state.value == "rolled_back" and registry.aliases() == {"champion": v1}
