"""Data validation: the per-image summary and the Great Expectations gate."""
