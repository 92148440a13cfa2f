"""This repository's DAG bundle: exactly the lines a user's bundle holds (README, "Install into your Airflow")."""

from mlcd.airflow.dags import mlcd_dags

globals().update(mlcd_dags())
