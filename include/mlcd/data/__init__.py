"""Data: landing zone, ledger, batches, snapshots, reference dataset."""
