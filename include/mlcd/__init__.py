"""mlcd: continuous delivery for ML models on Apache Airflow 3.

The core library is Airflow-free; ``mlcd.airflow`` holds the Airflow glue.
"""

from __future__ import annotations

__version__ = "0.1.0"
