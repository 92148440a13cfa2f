from __future__ import annotations

import numpy as np
import pytest

from mlcd.data.batch import BatchError, load_batch
from tests.badbatches import bad_batches, good_bytes

pytestmark = pytest.mark.unit

STRUCTURAL = {"not_a_zip", "truncated", "empty_file", "missing_keys", "object_arrays", "wrong_rank",
              "empty_arrays", "length_mismatch"}


@pytest.fixture(scope="module")
def sample(reference_data):  # type: ignore[no-untyped-def]
    return reference_data.x_train[:400], reference_data.y_train[:400]


def test_good_batch_loads_as_stored(sample) -> None:  # type: ignore[no-untyped-def]
    x, y = sample
    batch = load_batch(good_bytes(x, y))
    assert batch.x.dtype == np.uint8 and batch.x.shape == x.shape
    np.testing.assert_array_equal(batch.y, y)


@pytest.mark.parametrize("name", sorted(STRUCTURAL))
def test_structural_problems_refused_with_one_line_reason(sample, name: str) -> None:  # type: ignore[no-untyped-def]
    data, phrase = bad_batches(*sample)[name]
    with pytest.raises(BatchError) as err:
        load_batch(data)
    message = str(err.value)
    assert phrase in message
    assert "\n" not in message and "Traceback" not in message


def test_object_arrays_are_never_unpickled(tmp_path, sample) -> None:  # type: ignore[no-untyped-def]
    # A pickle payload that would create a file if it ran.
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.npz"
    np.savez(path, x=np.array([Evil()], dtype=object), y=np.array([1]))
    with pytest.raises(BatchError, match="object arrays"):
        load_batch(path)
    assert not marker.exists()


def test_unreadable_path_is_a_batch_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(BatchError, match="cannot read"):
        load_batch(tmp_path / "missing.npz")
