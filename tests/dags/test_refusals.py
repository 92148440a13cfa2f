"""A correct refusal ends the run in a state the Airflow overview does not show as a fault; a real fault still fails.

The quarantine and gate-rejection runs are in test_retrain_intake_dag.py and test_retrain_dag.py (skipped, run
success); here: ``mlcd_drift_watch`` before the gateway listens is skipped, while a gateway that answers garbage
still fails the task; and the control form's defaults are a dry run of the least drastic action.
"""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator

import pytest

pytestmark = pytest.mark.dags


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def broken_gateway() -> Iterator[str]:
    """A server on 127.0.0.1 that answers every request with a 500: a gateway that is up but broken."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            self.send_response(500)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def _states(run) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def test_drift_watch_before_the_gateway_listens_is_skipped_not_failed(dagbag, mlcd_home,  # type: ignore[no-untyped-def]
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLCD_GATEWAY_URL", f"http://127.0.0.1:{_free_port()}")  # nothing listens there
    run = dagbag.get_dag("mlcd_drift_watch").test()
    assert str(run.state) == "success" and _states(run) == {"check_drift": "skipped"}


def test_drift_watch_on_a_broken_gateway_still_fails(broken_gateway: str) -> None:
    """The check_drift task's body on a gateway that answers 500: a real fault, raised as a failure (a dag.test()
    run would wait out the task's retries, minutes)."""
    from airflow.sdk.exceptions import AirflowException, AirflowSkipException

    from mlcd.airflow.guard import drift_step

    with pytest.raises(AirflowException, match="unreadable") as err:
        drift_step(broken_gateway)
    assert not isinstance(err.value, AirflowSkipException)


def test_the_retrain_forms_object_params_carry_their_schema(dagbag) -> None:  # type: ignore[no-untyped-def]
    from airflow.exceptions import ParamValidationError

    dag = dagbag.get_dag("mlcd_retrain")
    gate, spec = dag.params.get_param("gate"), dag.params.get_param("canary_spec")
    assert gate.schema["additionalProperties"] is False and "accuracy_floor" in gate.schema["properties"]
    assert spec.schema["properties"]["steps"]["type"] == "array"
    gate.resolve({"accuracy_floor": 0.9, "non_inferiority_margin": 0.03})
    with pytest.raises(ParamValidationError, match="acuracy_floor"):
        gate.resolve({"acuracy_floor": 0.9})  # a typo is named in the form, before any run exists
    with pytest.raises(ParamValidationError):
        spec.resolve({"steps": [10, 150]})
    for name in ("batch_size", "seed"):
        assert dag.params.get_param(name).description
