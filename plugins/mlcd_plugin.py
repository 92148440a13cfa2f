"""This repository's plugins folder: the mlcd UI plugin, for an install whose metadata lacks its entry point.

The plugin ships in the package (:mod:`mlcd.airflow.plugin`) and an installed mlcd registers it through the
``airflow.plugins`` entry point, so a user's Airflow needs no copy of this file. It only exposes the class when that
entry point is missing (an editable install older than the entry point): Airflow refuses a second plugin of the same
name with an "already registered" import error, so it must never be offered twice.
"""

from __future__ import annotations

from importlib.metadata import entry_points

if not any(ep.value.startswith("mlcd.") for ep in entry_points(group="airflow.plugins")):
    from mlcd.airflow.plugin import MlcdPlugin

    __all__ = ["MlcdPlugin"]
