"""The Great Expectations gate: a suite file from ``expectations/`` run on a batch's per-image summary.

GX Core 1.x API: an ephemeral context with a pandas dataframe asset, a validation definition per suite and a
checkpoint whose action writes Data Docs HTML under ``MLCD_HOME/data_docs``. The context is built once per
process and suite (building it costs more than validating 70,000 rows).
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlcd.data.batch import Batch
from mlcd.validation.summary import summarize

log = logging.getLogger(__name__)
# GX logs one INFO line per public-API function at import ("Skipping registering function ... because it is a
# closure"): 216 of the 230 lines of a validate task log. Raised before GX is first imported (in GxGate) so a task
# log shows the verdicts; GX's own warnings and errors still reach it.
logging.getLogger("great_expectations._docs_decorators").setLevel(logging.WARNING)

DEFAULT_SUITE = "mnist_batch"
DOCS_SITE = "mlcd"


@dataclass(frozen=True)
class ValidationOutcome:
    """The gate's answer for one batch."""

    passed: bool
    reason: str | None  # one line; None when passed
    failures: list[dict[str, Any]] = field(default_factory=list)
    n_images: int = 0
    data_docs: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "reason": self.reason,
            "failures": self.failures,
            "n_images": self.n_images,
            "data_docs": self.data_docs,
        }


def load_suite_dict(expectations_dir: Path, suite_name: str = DEFAULT_SUITE) -> dict[str, Any]:
    path = Path(expectations_dir) / f"{suite_name}.json"
    try:
        suite: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"expectation suite {suite_name!r} not found at {path}") from None
    return suite


def _json_safe(value: Any) -> Any:
    """Observed values from GX may hold NumPy scalars; keep reasons and ledger rows plain JSON."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    return value


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _describe(failure: dict[str, Any]) -> str:
    """One clause for a failed expectation: the suite's reason plus what was observed."""
    result = failure.get("result", {})
    observed = []
    if "unexpected_percent" in result and result.get("unexpected_count"):
        observed.append(f"{result['unexpected_count']} images ({result['unexpected_percent']:.1f}%)")
        sample = result.get("partial_unexpected_list") or []
        if sample:
            shown = ", ".join(list(dict.fromkeys(_short(s) for s in sample))[:3])
            observed.append(f"e.g. {shown}")
    elif "observed_value" in result:
        value = result["observed_value"]
        observed.append(f"observed {_short(value)}")
    text = failure["reason"]
    return f"{text} [{'; '.join(observed)}]" if observed else text


class GxGate:
    """Runs one suite on summary frames. Thread-safe; build once, call :meth:`validate` per batch."""

    def __init__(self, suite: dict[str, Any], data_docs_dir: Path | None = None) -> None:
        import great_expectations as gx
        from great_expectations.checkpoint import UpdateDataDocsAction, ValidationAction

        self.suite_name = suite["name"]
        self._reasons = {
            i: (exp.get("meta") or {}).get("reason") or exp["type"] for i, exp in enumerate(suite["expectations"])
        }
        self._lock = threading.Lock()
        self.data_docs_dir = Path(data_docs_dir) if data_docs_dir else None
        from great_expectations.data_context.types.base import ProgressBarsConfig

        context = gx.get_context(mode="ephemeral")
        # Progress bars would flood the Airflow task log with one line per metric batch.
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        actions: list[ValidationAction] = []
        if self.data_docs_dir is not None:
            self.data_docs_dir.mkdir(parents=True, exist_ok=True)
            context.add_data_docs_site(
                site_name=DOCS_SITE,
                site_config={
                    "class_name": "SiteBuilder",
                    "store_backend": {
                        "class_name": "TupleFilesystemStoreBackend",
                        "base_directory": str(self.data_docs_dir),
                    },
                    "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                },
            )
            actions.append(UpdateDataDocsAction(name="update_data_docs", site_names=[DOCS_SITE]))
        source = context.data_sources.add_pandas(name="mlcd")
        asset = source.add_dataframe_asset(name="batch_summary")
        batch_definition = asset.add_batch_definition_whole_dataframe("whole_batch")
        expectations = []
        for i, exp in enumerate(suite["expectations"]):
            # Tag each expectation with its index so a result maps back to the suite's reason text.
            meta = dict(exp.get("meta") or {}, mlcd_index=i)
            expectations.append({"type": exp["type"], "kwargs": exp["kwargs"], "meta": meta})
        gx_suite = context.suites.add(
            gx.ExpectationSuite(name=self.suite_name, expectations=expectations, meta=suite.get("meta") or {})
        )
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"{self.suite_name}-definition", data=batch_definition, suite=gx_suite)
        )
        self._checkpoint = context.checkpoints.add(
            gx.Checkpoint(
                name=f"{self.suite_name}-checkpoint",
                validation_definitions=[definition],
                actions=actions,
                result_format={"result_format": "SUMMARY", "partial_unexpected_count": 5},
            )
        )

    def validate_frame(self, frame: pd.DataFrame, *, batch_label: str | None = None) -> ValidationOutcome:
        """Validate a summary frame; the reason joins each failed expectation's sentence."""
        from great_expectations.core.run_identifier import RunIdentifier

        with self._lock:
            # The run is named after the batch, so the site's index says which batch each page judged.
            name = batch_label.replace("/", "_").replace("\\", "_") if batch_label else None  # one folder per run
            run_id = RunIdentifier(run_name=name) if name else None
            run = self._checkpoint.run(batch_parameters={"dataframe": frame}, run_id=run_id)
            if self.data_docs_dir is not None:
                from mlcd.validation.docs_site import finish

                finish(self.data_docs_dir)  # every validation listed, every page offline (no CDN)
        failures = []
        for validation in run.run_results.values():
            for item in validation.results:
                if item.success:
                    continue
                config = item.expectation_config
                if config is None:  # GX attaches what it validated to every result; without it no reason can be told
                    raise RuntimeError(f"GX returned a failed result without its expectation: {item.result}")
                index = int((config.meta or {}).get("mlcd_index", -1))
                failures.append(
                    {
                        "expectation": config.type,
                        "column": config.kwargs.get("column"),
                        "reason": self._reasons.get(index, config.type),
                        "result": _json_safe(dict(item.result or {})),
                    }
                )
                # GX 1.x keys exception_info by metric id ({id: {"raised_exception", ...}}); older results are flat.
                info = item.exception_info or {}
                raised = [info] if "raised_exception" in info else [e for e in info.values() if isinstance(e, dict)]
                messages = [str(e.get("exception_message")) for e in raised if e.get("raised_exception")]
                if messages:
                    failures[-1]["error"] = "; ".join(dict.fromkeys(messages))
        docs = str(self.data_docs_dir / "index.html") if self.data_docs_dir else None
        if not failures:
            return ValidationOutcome(passed=True, reason=None, n_images=len(frame), data_docs=docs)
        reason = "; ".join(dict.fromkeys(_describe(f) for f in failures))
        if batch_label:
            log.info("batch %s failed %s: %s", batch_label, self.suite_name, reason)
        return ValidationOutcome(passed=False, reason=reason, failures=failures, n_images=len(frame), data_docs=docs)

    def validate(self, batch: Batch, *, batch_label: str | None = None) -> ValidationOutcome:
        return self.validate_frame(summarize(batch.x, batch.y), batch_label=batch_label)


_GATES: dict[tuple[str, str, str | None], GxGate] = {}
_GATES_LOCK = threading.Lock()


def get_gate(expectations_dir: Path, suite_name: str = DEFAULT_SUITE, data_docs_dir: Path | None = None) -> GxGate:
    """A cached gate for this suite file and Data Docs folder (reloaded when the file changes)."""
    path = Path(expectations_dir) / f"{suite_name}.json"
    suite = load_suite_dict(expectations_dir, suite_name)
    key = (str(path), json.dumps(suite, sort_keys=True), str(data_docs_dir) if data_docs_dir else None)
    with _GATES_LOCK:
        gate = _GATES.get(key)
        if gate is None:
            gate = _GATES[key] = GxGate(suite, data_docs_dir)
        return gate
