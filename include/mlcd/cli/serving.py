"""``mlcd serve`` (the gateway on 127.0.0.1) and ``mlcd traffic`` (bounded live traffic for demos and tests)."""

from __future__ import annotations

import click


@click.command("serve")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True, help="Port on 127.0.0.1.")
def serve_command(port: int) -> None:
    """Serve the champion (and canary) of the registry on 127.0.0.1 until interrupted."""
    from mlcd.serving.config import GatewayConfig
    from mlcd.serving.server import serve

    config = GatewayConfig.from_settings()
    click.echo(
        f"mlcd gateway for {config.model_name} on http://127.0.0.1:{port} "
        f"(registry {config.tracking_uri}, state {config.state_path}, "
        f"admin {'enabled' if config.admin_token else 'disabled: set MLCD_ADMIN_TOKEN'}, "
        f"feedback {'enabled' if config.feedback_token else 'disabled: set MLCD_FEEDBACK_TOKEN'})"
    )
    serve(config, port)


@click.command("traffic")
@click.option("--rate", type=click.FloatRange(0, 1000, min_open=True), default=20.0, show_default=True,
              help="Requests per second (at most 1000).")
@click.option("--duration", type=click.FloatRange(0, 3600, min_open=True), default=60.0, show_default=True,
              help="Seconds to run (at most 3600).")
@click.option("--feedback/--no-feedback", default=False, show_default=True,
              help="Post each prediction's true label (reference test set) to /feedback.")
@click.option("--clients", type=click.IntRange(0, 100_000), default=0, show_default=True,
              help="Send a client_id from this many clients (sticky routing); 0 sends none.")
@click.option("--url", default=None, help="Gateway URL on loopback [default: MLCD_GATEWAY_URL].")
def traffic_command(rate: float, duration: float, feedback: bool, clients: int, url: str | None) -> None:
    """Send bounded single-image traffic from the reference test set to a gateway on 127.0.0.1."""
    from mlcd.serving.traffic import require_loopback, run_traffic
    from mlcd.settings import get_settings

    target = url or get_settings().gateway_url
    try:
        require_loopback(target)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--url") from None
    try:
        report = run_traffic(target, rate, duration, feedback=feedback, clients=clients)
    except ValueError as exc:  # e.g. --feedback without MLCD_FEEDBACK_TOKEN
        raise click.ClickException(str(exc)) from None
    click.echo(report.summary())
    if report.ok == 0:
        raise click.ClickException("no request succeeded")


def register(group: click.Group) -> None:
    group.add_command(serve_command)
    group.add_command(traffic_command)
