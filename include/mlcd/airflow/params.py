"""JSON Schemas of the object-typed DAG params (``gate``, ``canary_spec``), so the trigger form checks them.

A free ``type: object`` accepted ``{"acuracy_floor": 0.95}`` and the run found out at the gate; with the schema the
trigger form names the bad key before the run exists. Fields are derived from the dataclasses that read them
(``RolloutSpec`` is stdlib-only, so it is read at parse time; ``GateConfig`` imports numpy, so its fields are
listed here and ``tests/unit/test_param_schemas.py`` keeps the two equal).
"""

from __future__ import annotations

import dataclasses
from typing import Any

# GateConfig's fields (mlcd.evaluation.gate), each with its schema and what it means.
GATE_FIELDS: dict[str, dict[str, Any]] = {
    "accuracy_floor": {"type": "number", "minimum": 0, "maximum": 1,
                       "description": "The challenger's accuracy must be at least this (0.90 by default)."},
    "alpha": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1,
              "description": "Significance level of the McNemar test."},
    "max_class_recall_drop": {"type": "number", "minimum": 0, "maximum": 1,
                              "description": "Largest allowed drop of any class's recall against the champion."},
    "min_class_support": {"type": "integer", "minimum": 0,
                          "description": "Classes with fewer test examples are not judged for a drop."},
    "class_recall_floor": {"type": ["null", "number"], "minimum": 0, "maximum": 1,
                           "description": "Optional absolute floor on every class's recall."},
    "require_improvement": {"type": "boolean",
                            "description": "Pass only when the challenger is significantly better."},
    "mid_p": {"type": "boolean", "description": "Decide on the mid-p McNemar value (else the exact one)."},
    "non_inferiority_margin": {"type": "number", "exclusiveMinimum": 0, "maximum": 1,
                               "description": "Largest paired accuracy loss tolerated, as a fraction (0.002)."},
}


def gate_schema() -> dict[str, Any]:
    """The ``gate`` param's schema: GateConfig's fields, nothing else."""
    return {"type": "object", "properties": GATE_FIELDS, "additionalProperties": False}


def _field_schema(name: str, annotation: str) -> dict[str, Any]:
    if name == "steps":
        return {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 100}, "minItems": 1}
    if name == "on_undecided":
        from mlcd.rollout.spec import UNDECIDED_ACTIONS

        return {"type": "string", "enum": list(UNDECIDED_ACTIONS)}
    base = {"float": "number", "int": "integer", "str": "string", "bool": "boolean"}
    kind = annotation.replace(" ", "").split("|")
    if kind[0].startswith("Mapping") or kind[0].startswith("dict"):
        return {"type": "object"}
    types = [base.get(k, "number") for k in kind if k != "None"]
    return {"type": (["null", *types] if "None" in kind else types[0])}


def canary_spec_schema() -> dict[str, Any]:
    """The ``canary_spec`` param's schema, from :class:`mlcd.rollout.spec.RolloutSpec`'s fields."""
    from mlcd.rollout.spec import RolloutSpec

    props = {f.name: _field_schema(f.name, str(f.type)) for f in dataclasses.fields(RolloutSpec)}
    return {"type": "object", "properties": props, "additionalProperties": False}
