"""The gate's failure record keeps a bounded sample of the offending values (found by the mutation run, issue 18).

A failed expectation's record goes to the ledger, the quarantine folder's reason.json and the task log; it keeps
five example values, however many images failed. Real GX on a small frame, as in test_validation_gate_rules.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from mlcd.validation.gate import get_gate

pytestmark = pytest.mark.unit

SUITE = {
    "name": "bounded_suite",
    "expectations": [
        {"type": "expect_column_values_to_be_between", "kwargs": {"column": "label", "min_value": 0, "max_value": 9},
         "meta": {"reason": "labels must be digits 0-9"}},
    ],
}


def test_a_failure_record_keeps_five_example_values_however_many_images_failed(tmp_path: Path) -> None:
    (tmp_path / "bounded_suite.json").write_text(json.dumps(SUITE))
    gate = get_gate(tmp_path, "bounded_suite")
    labels = [float(v) for v in range(20, 40)] + [1.0] * 20  # 20 distinct bad labels
    out = gate.validate_frame(pd.DataFrame({"label": labels}), batch_label="many bad")
    assert not out.passed and len(out.failures) == 1
    result = out.failures[0]["result"]
    assert result["unexpected_count"] == 20
    assert len(result["partial_unexpected_list"]) == 5
    assert out.reason is not None and "20 images (50.0%)" in out.reason and "e.g. 20, 21, 22" in out.reason
