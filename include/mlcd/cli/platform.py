"""``mlcd up`` / ``mlcd down`` / ``mlcd ps``: the long-running embedded platform (``make up`` / ``make down``)."""

from __future__ import annotations

import click


@click.command("up")
@click.option("--no-gateway", is_flag=True, help="Start Airflow and MLflow only.")
def up_command(no_gateway: bool) -> None:
    """Start Airflow (api-server, scheduler, dag-processor, triggerer), MLflow and the gateway on 127.0.0.1."""
    from mlcd.platform import up

    click.echo("starting the platform (first start takes about a minute) ...")
    try:
        urls = up(with_gateway=not no_gateway)
    except RuntimeError as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"Airflow UI : {urls['airflow']}   (login {urls['login']})")
    click.echo(f"MLflow UI  : {urls['mlflow']}")
    if not no_gateway:
        click.echo(f"Gateway    : {urls['gateway']}   (/predict, /metrics, /healthz)")
    click.echo(f"Logs       : {urls['logs']}")
    click.echo("Stop with: make down")


@click.command("down")
def down_command() -> None:
    """Stop every service that `mlcd up` started."""
    from mlcd.platform import down

    stopped = down()
    click.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@click.command("ps")
def ps_command() -> None:
    """Which platform services are running."""
    from mlcd.platform import status

    for name, pid in status().items():
        click.echo(f"{name:<24} {'running (pid ' + str(pid) + ')' if pid else 'stopped'}")


def register(group: click.Group) -> None:
    for command in (up_command, down_command, ps_command):
        group.add_command(command)
