"""mlcd's notifications as Airflow ``BaseNotifier``s, used as task and DAG callbacks.

Airflow renders a notifier's ``template_fields`` against the callback's context before ``notify`` runs, so a
message like ``"version {{ ti.xcom_pull(task_ids='rollback')['version'] }} rolled back"`` arrives filled in.

Where a message goes is decided by the Connection ``mlcd_alerts``:

* type ``slackwebhook`` (and the Slack provider installed): Slack's own ``SlackWebhookNotifier``;
* any other type with a host (e.g. ``http``; host = the webhook URL): a POST through Airflow's ``HttpHook`` with
  ``{"text": message, "source": "mlcd", "dag_id", "run_id", "task_id"}`` (Slack-compatible incoming-webhook
  shape); ``password`` without ``login`` is sent as a bearer token;
* no Connection (the embedded default): the task log at WARNING, where the on-call engineer reads why.

A failed delivery is logged at ERROR and never raised: the rollback it reports has already happened and must not
be undone or failed by a lost alert.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseNotifier

ALERTS_CONN_ID = "mlcd_alerts"


class MlcdNotifier(BaseNotifier):
    """Send a rendered message to the ``mlcd_alerts`` Connection (Slack webhook, HTTP webhook) or the log.

    Args:
        message: the text (templated).
        conn_id: the Connection (templated).
        timeout: seconds for the POST.
    """

    template_fields: Sequence[str] = ("message", "conn_id")
    default_message = "mlcd: notification (no message)"

    def __init__(self, message: str = "", conn_id: str = ALERTS_CONN_ID, timeout: float = 10.0) -> None:
        super().__init__()
        self.message = message
        self.conn_id = conn_id
        self.timeout = timeout

    def _connection(self) -> Any | None:
        from airflow.sdk import BaseHook
        from airflow.sdk.exceptions import AirflowNotFoundException

        try:
            return BaseHook.get_connection(self.conn_id)
        except AirflowNotFoundException:
            return None

    @staticmethod
    def _where(context: Any) -> dict[str, str]:
        """DAG, run and task of the callback, when the context has them (a direct ``notify({})`` has not)."""
        out: dict[str, str] = {}
        ti = context.get("ti") if hasattr(context, "get") else None
        run_id = context.get("run_id") if hasattr(context, "get") else None
        if ti is not None:
            out = {"dag_id": str(getattr(ti, "dag_id", "")), "task_id": str(getattr(ti, "task_id", ""))}
        if run_id:
            out["run_id"] = str(run_id)
        return out

    def notify(self, context: Any) -> None:
        text = str(self.message or self.default_message)
        conn = self._connection()
        if conn is None or not (conn.host or "").strip() and conn.conn_type != "slackwebhook":
            self.log.warning("ALERT (no %s connection, logged only): %s", self.conn_id, text)
            return
        try:
            if conn.conn_type == "slackwebhook":
                self._slack(context, text)
            else:
                self._webhook(conn, context, text)
        except Exception as exc:  # noqa: BLE001 - see the module docstring: logged, never raised
            self.log.error("alert to %s failed (%s: %s); message was: %s", self.conn_id, type(exc).__name__, exc, text)

    def _slack(self, context: Any, text: str) -> None:
        try:
            from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier
        except ImportError:
            self.log.warning("ALERT (%s is a Slack webhook but the Slack provider is not installed): %s",
                             self.conn_id, text)
            return
        SlackWebhookNotifier(slack_webhook_conn_id=self.conn_id, text=text, timeout=int(self.timeout)).notify(context)
        self.log.info("alert sent to Slack through %s: %s", self.conn_id, text)

    def _webhook(self, conn: Any, context: Any, text: str) -> None:
        from airflow.providers.http.hooks.http import HttpHook

        headers = {"Content-Type": "application/json"}
        if conn.password and not conn.login:
            headers["Authorization"] = f"Bearer {conn.password}"
        response = HttpHook(method="POST", http_conn_id=self.conn_id).run(
            endpoint=None,
            json={"text": text, "source": "mlcd", **self._where(context)},
            headers=headers,
            extra_options={"timeout": self.timeout},
        )
        self.log.info("alert posted to %s (%s): %s", self.conn_id, response.status_code, text)


class RollbackNotifier(MlcdNotifier):
    """The guard's rollback alert (``on_success_callback`` of ``mlcd_guard``'s ``rollback`` task)."""

    default_message = "mlcd: rollback (no message)"


class RolloutNotifier(MlcdNotifier):
    """A rollout's outcome: promotion (the canary task's success) or a failed ``mlcd_retrain`` run."""

    default_message = "mlcd: rollout event (no message)"


# Callback messages (Jinja, rendered by Airflow against the callback's context).
ROLLBACK_MESSAGE = "{{ (ti.xcom_pull(task_ids='rollback') or {}).get('message') or 'mlcd: a version was rolled back' }}"
PROMOTED_MESSAGE = (
    "mlcd: version {{ (ti.xcom_pull(task_ids='canary') or {}).get('version') }} of {{ dag.dag_id }} rollout "
    "{{ (ti.xcom_pull(task_ids='canary') or {}).get('result') }} (run {{ run_id }})"
)
RUN_FAILED_MESSAGE = (
    "mlcd: {{ dag_run.dag_id }} run {{ dag_run.run_id }} failed{% if reason is defined and reason %}: {{ reason }}{% endif %}"
)


def alert_ops_event(event: Any, version: str | None, reason: str) -> None:
    """Send a rollback or a fail-closed move through the alert Connection as it is recorded.

    Registered with :func:`mlcd.rollout.opsignals.add_listener` by the canary and guard operators' modules, so a
    fail-closed move (which used to be recorded and logged only) and a rollback made by any path (the canary task's
    own verdict, the guard, a person) reach the people on call; ``MlcdNotifier.notify`` logs instead of raising.
    """
    kind = getattr(event, "value", str(event))
    text = f"mlcd: {kind.replace('_', '-')} of version {version}: {reason}"
    MlcdNotifier(message=text).notify({})
