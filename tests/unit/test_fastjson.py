"""msgspec on the happy path, the standard library on everything else: same values, same refusals."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mlcd.serving import fastjson
from mlcd.serving.app import RequestError, _parse_json

pytestmark = pytest.mark.unit

ACCEPTED = [
    b'{"inputs": [{"name": "images", "shape": [1, 784], "datatype": "FP32", "data": [0.0, 1.5, 255, 1e-05]}]}',
    b'{"a": 1, "a": 2}',  # duplicate keys: the last wins in both
    b'[1, -0.0, 1e308, 12345678901234567890]',  # a uint64 integer
    b'123456789012345678901234567890',  # beyond 64 bits: msgspec refuses, json takes it
    b'[NaN, Infinity, -Infinity]',  # not JSON, but json.loads takes them (check_pixels then refuses them)
    '"\u00e9t\u00e9 \\ud83d\\ude00"'.encode(),
    '{"x": "caf\u00e9"}'.encode("utf-16"),  # json.loads detects UTF-16 from the bytes
    b'  {"nested": [[[[]]]]}  ',
]


@pytest.mark.parametrize("raw", ACCEPTED)
def test_loads_gives_what_json_loads_gives(raw: bytes) -> None:
    expected, got = json.loads(raw), fastjson.loads(raw)
    assert json.dumps(got) == json.dumps(expected)  # NaN-safe comparison, and types (int stays int)
    assert type(got) is type(expected)


@pytest.mark.parametrize("raw", [b"", b"{", b'{"a": 1,}', b"\xff\xfe\x00", b"[1, 2] x", b'"\\ud800', b"[" * 100_000])
def test_refusals_are_the_standard_library_s_one_line_400s(raw: bytes) -> None:
    try:
        json.loads(raw)
    except RecursionError:
        expected = "body is not acceptable JSON: nested too deeply"
    except (ValueError, UnicodeDecodeError) as exc:
        expected = f"body is not valid JSON: {str(exc).splitlines()[0]}"
    with pytest.raises(RequestError) as err:
        _parse_json(raw)
    assert err.value.status == 400 and err.value.reason == expected


def test_dumps_is_compact_json_and_writes_non_finite_numbers_as_null() -> None:
    value = {"probabilities": np.float32([0.25, 1e-5]).tolist(), "class": [3], "id": "r-1", "ok": True}
    assert json.loads(fastjson.dumps(value)) == value
    assert b" " not in fastjson.dumps(value)
    assert json.loads(fastjson.dumps([math.nan, math.inf])) == [None, None]
