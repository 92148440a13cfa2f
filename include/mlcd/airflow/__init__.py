"""Airflow glue for mlcd: operators, sensors, triggers, hooks. The only part of mlcd that imports Airflow."""
