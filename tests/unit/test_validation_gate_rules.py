"""The Great Expectations gate's own logic on small frames: reasons, observed values, caching, Data Docs path.

Real GX (an ephemeral in-process context, no server) on a two-column frame and a three-expectation suite, so each
branch of the gate is reached in well under a second once GX is imported.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mlcd.validation.gate import (
    ValidationOutcome,
    _describe,
    _json_safe,
    _short,
    get_gate,
    load_suite_dict,
)

pytestmark = pytest.mark.unit

SUITE: dict[str, Any] = {
    "name": "tiny_suite",
    "expectations": [
        {"type": "expect_column_values_to_be_between", "kwargs": {"column": "label", "min_value": 0, "max_value": 9},
         "meta": {"reason": "labels must be digits 0-9"}},
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "label"}},  # no reason: type is shown
        {"type": "expect_column_mean_to_be_between", "kwargs": {"column": "ink", "min_value": 0.1, "max_value": 0.3},
         "meta": {"reason": "average ink out of range"}},
    ],
}


def _frame(labels: list[float], ink: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"label": labels, "ink": ink})


@pytest.fixture(scope="module")
def suite_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("suites")
    (d / "tiny_suite.json").write_text(json.dumps(SUITE))
    return d


def test_json_safe_turns_numpy_and_non_finite_values_into_plain_json() -> None:
    value = {1: np.int64(3), "f": np.float32(0.5), "l": (np.bool_(True), [np.float64(2.0)]), "n": math.nan,
             "i": math.inf, "s": "x", "ok": 1.5}
    safe = _json_safe(value)
    assert safe == {"1": 3, "f": 0.5, "l": [True, [2.0]], "n": "nan", "i": "inf", "s": "x", "ok": 1.5}
    assert type(safe["1"]) is int and type(safe["l"][0]) is bool and type(safe["f"]) is float
    json.dumps(safe, allow_nan=False)  # nothing left that strict JSON refuses


def test_short_and_describe_give_one_readable_clause() -> None:
    assert _short(0.123456) == "0.123" and _short(7) == "7" and _short("a") == "a"
    counted = {"reason": "labels must be digits 0-9",
               "result": {"unexpected_count": 4, "unexpected_percent": 2.0, "partial_unexpected_list": [11, 11, 12, 13, 14]}}
    assert _describe(counted) == "labels must be digits 0-9 [4 images (2.0%); e.g. 11, 12, 13]"
    no_sample = {"reason": "r", "result": {"unexpected_count": 1, "unexpected_percent": 50.0}}
    assert _describe(no_sample) == "r [1 images (50.0%)]"
    # A count of zero is no evidence: the observed value is reported instead.
    zero = {"reason": "r", "result": {"unexpected_count": 0, "unexpected_percent": 0.0, "observed_value": 0.41234}}
    assert _describe(zero) == "r [observed 0.412]"
    assert _describe({"reason": "mean off", "result": {"observed_value": 0.5}}) == "mean off [observed 0.5]"
    assert _describe({"reason": "bare", "result": {}}) == "bare"
    assert _describe({"reason": "bare"}) == "bare"


def test_load_suite_dict_names_a_missing_suite(tmp_path: Path, suite_dir: Path) -> None:
    assert load_suite_dict(suite_dir, "tiny_suite") == SUITE
    with pytest.raises(FileNotFoundError, match=r"expectation suite 'nope' not found at .*nope\.json"):
        load_suite_dict(tmp_path, "nope")


def test_outcome_as_dict() -> None:
    out = ValidationOutcome(passed=False, reason="r", failures=[{"a": 1}], n_images=3, data_docs="/d/index.html")
    assert out.as_dict() == {"passed": False, "reason": "r", "failures": [{"a": 1}], "n_images": 3,
                             "data_docs": "/d/index.html"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        out.passed = True  # type: ignore[misc]  # a verdict, once given, is not edited downstream


def test_gate_passes_a_clean_frame_and_explains_each_failure(suite_dir: Path) -> None:
    gate = get_gate(suite_dir, "tiny_suite")
    assert gate.suite_name == "tiny_suite"
    ok = gate.validate_frame(_frame([1, 2, 3, 4], [0.2, 0.2, 0.2, 0.2]), batch_label="good")
    assert (ok.passed, ok.reason, ok.failures, ok.n_images, ok.data_docs) == (True, None, [], 4, None)

    bad = gate.validate_frame(_frame([1, 12, None, 3, 3], [0.9, 0.9, 0.9, 0.9, 0.9]), batch_label="bad")
    assert not bad.passed and bad.n_images == 5
    assert [(f["expectation"], f["column"], f["reason"]) for f in bad.failures] == [
        ("expect_column_values_to_be_between", "label", "labels must be digits 0-9"),
        ("expect_column_values_to_not_be_null", "label", "expect_column_values_to_not_be_null"),
        ("expect_column_mean_to_be_between", "ink", "average ink out of range"),
    ]
    assert bad.reason == ("labels must be digits 0-9 [1 images (25.0%); e.g. 12]; "
                          "expect_column_values_to_not_be_null [1 images (20.0%); e.g. nan]; "
                          "average ink out of range [observed 0.9]")
    json.dumps(bad.as_dict())  # ledger rows and XComs take it as is
    assert all("error" not in f for f in bad.failures)


def test_gate_reports_an_expectation_that_raised(suite_dir: Path) -> None:
    gate = get_gate(suite_dir, "tiny_suite")
    out = gate.validate_frame(pd.DataFrame({"label": [1, 2]}))  # no "ink" column: that expectation errors
    failed = [f for f in out.failures if f["column"] == "ink"]
    # The failure carries GX's own message, so "ink out of range" is not mistaken for the real cause.
    assert not out.passed and len(failed) == 1 and "ink" in failed[0]["error"], failed


def test_gates_are_cached_per_suite_content_and_docs_folder(suite_dir: Path, tmp_path: Path) -> None:
    first = get_gate(suite_dir, "tiny_suite")
    assert get_gate(suite_dir, "tiny_suite") is first
    docs = tmp_path / "site" / "docs"  # a folder whose parent does not exist yet
    with_docs = get_gate(suite_dir, "tiny_suite", docs)
    assert with_docs is not first and docs.is_dir()
    out = with_docs.validate_frame(_frame([1, 2], [0.2, 0.2]))
    assert out.data_docs == str(docs / "index.html") and (docs / "index.html").exists()
    changed = tmp_path / "suites"
    changed.mkdir()
    edited = json.loads(json.dumps(SUITE))
    edited["expectations"] = edited["expectations"][:1]
    (changed / "tiny_suite.json").write_text(json.dumps(edited))
    other = get_gate(changed, "tiny_suite")
    assert other is not first
    assert other.validate_frame(_frame([1, 2], [0.9, 0.9])).passed  # the ink rule is gone from this file
