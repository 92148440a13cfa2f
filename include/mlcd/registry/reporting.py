"""Reporting: aliases and versions with their states, the full history, and which version held which alias when.

Which version was champion when is derived from the versions' transitions (entering/leaving ``champion``),
which MLflow itself does not keep.
"""

from __future__ import annotations

import json
from typing import Any

from mlcd.registry.base import _ms_iso
from mlcd.registry.journal import JournalMixin
from mlcd.registry.state import RolloutRecord, parse_state
from mlcd.registry.tags import ALIASES, STATE_ALIAS, TAG_METRICS, TAG_P_VALUE, TAG_VERDICT, Alias


class ReportingMixin(JournalMixin):
    """Read-only views for people (``mlcd status``, ``mlcd history``) and for the guard (``champion_at``)."""

    # -- reading --------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Aliases and versions with their states and verdicts, and any disagreement between the two."""
        aliases = self.aliases()
        versions = []
        records: dict[str, RolloutRecord] = {}
        for mv in self.list_versions() if aliases or self._model_exists() else []:
            v = str(mv.version)
            rec = self._record_from_tags(v, dict(mv.tags or {}))
            records[v] = rec
            last = rec.transitions()[-1] if rec.transitions() else {}
            versions.append({
                "version": v,
                "state": rec.state.value,
                "aliases": sorted(a for a, av in aliases.items() if av == v),
                "verdict": rec.tags.get(TAG_VERDICT),
                "p_value": rec.tags.get(TAG_P_VALUE),
                "accuracy": _accuracy(rec.tags.get(TAG_METRICS)),
                "run_id": mv.run_id,
                "created": _ms_iso(mv.creation_timestamp),
                "since": last.get("t"),
                "reason": last.get("why"),
            })
        problems = []
        for alias in ALIASES:
            holder = aliases.get(alias)
            if holder is not None and holder in records and STATE_ALIAS.get(records[holder].state) != alias:
                problems.append(f"alias {alias} -> version {holder}, but its state is {records[holder].state.value}")
        for v, rec in records.items():
            held = STATE_ALIAS.get(rec.state)
            if held and aliases.get(held) != v:
                problems.append(f"version {v} is {rec.state.value} but alias {held} -> {aliases.get(held)}")
        return {
            "model_name": self.model_name,
            "tracking_uri": self.tracking_uri,
            "aliases": {a: aliases.get(a) for a in ALIASES} | {a: v for a, v in aliases.items() if a not in ALIASES},
            "versions": versions,
            "consistent": not problems,
            "problems": problems,
        }

    def history(self) -> list[dict[str, Any]]:
        """Every accepted history entry of every version, oldest first, each with its ``version``."""
        if not self._model_exists():
            return []
        out: list[dict[str, Any]] = []
        for mv in self.list_versions():
            rec = self._record_from_tags(str(mv.version), dict(mv.tags or {}))
            out.extend({"version": rec.version, **e} for e in rec.history)
        return sorted(out, key=lambda e: (e.get("t", ""), int(e["version"])))

    def alias_history(self) -> list[dict[str, Any]]:
        """Which version held which alias when: intervals ``{"alias", "version", "start", "end", ...}``.

        Derived from the versions' state transitions (entering ``champion`` sets the champion alias, leaving
        it unsets it), so it is as complete as the records and needs no size-limited model-level tag.
        ``end`` is None while the version still holds the alias.
        """
        intervals: list[dict[str, Any]] = []
        for entry in self.history():
            if "to" not in entry:
                continue
            left = STATE_ALIAS.get(parse_state(entry["from"])) if entry.get("from") else None
            entered = STATE_ALIAS.get(parse_state(entry["to"]))
            if left:
                for iv in reversed(intervals):
                    if iv["alias"] == left and iv["version"] == entry["version"] and iv["end"] is None:
                        iv["end"] = entry["t"]
                        iv["end_reason"] = entry.get("why")
                        break
            if entered:
                intervals.append({
                    "alias": entered,
                    "version": entry["version"],
                    "start": entry["t"],
                    "end": None,
                    "reason": entry.get("why"),
                    "actor": entry.get("by"),
                    "dag_run_id": entry.get("dag_run"),
                    "end_reason": None,
                })
        # A previous version loses the alias (without a state change) when the next one takes it.
        for alias in (Alias.PREVIOUS,):
            held = [iv for iv in intervals if iv["alias"] == alias]
            for a, b in zip(held, held[1:], strict=False):
                if a["end"] is None or a["end"] > b["start"]:
                    a["end"] = b["start"]
                    a["end_reason"] = a["end_reason"] or f"alias taken by version {b['version']}"
        return intervals

    def champion_at(self, when: str) -> str | None:
        """The version that was champion at ISO time ``when`` (None before the first one)."""
        for iv in self.alias_history():
            if iv["alias"] == Alias.CHAMPION and iv["start"] <= when and (iv["end"] is None or when < iv["end"]):
                return str(iv["version"])
        return None


def _accuracy(metrics_json: str | None) -> float | None:
    if not metrics_json:
        return None
    try:
        value = json.loads(metrics_json).get("accuracy")
        return None if value is None else float(value)
    except (ValueError, AttributeError, TypeError):
        return None

