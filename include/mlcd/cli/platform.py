"""``mlcd up`` / ``mlcd down`` / ``mlcd ps``: the long-running embedded platform (``make up`` / ``make down``)."""

from __future__ import annotations

import os

import click


@click.command("up")
@click.option("--no-gateway", is_flag=True, help="Start Airflow and MLflow only.")
def up_command(no_gateway: bool) -> None:
    """Start Airflow (api-server, scheduler, dag-processor, triggerer), MLflow and the gateway on 127.0.0.1."""
    from mlcd.homestate import SETTINGS_FILE, apply_saved_settings, forget_platform, home_dir, record_platform
    from mlcd.platform import up
    from mlcd.settings import get_settings

    home = home_dir()
    # The address of an earlier start is not true any more (and must not steer this start's own settings).
    forget_platform(home)
    # The state's own settings (the demo's gate, canary spec, bake...) under this shell's environment: every
    # service started below inherits them, so the trigger form shows the params this state was run with.
    applied = apply_saved_settings(home=home)
    if applied:
        click.echo(f"settings saved with this state ({home / SETTINGS_FILE}): {', '.join(sorted(applied))}")
    click.echo("starting the platform (first start takes about a minute) ...")
    try:
        urls = up(with_gateway=not no_gateway)
    except RuntimeError as err:
        raise click.ClickException(str(err)) from None
    record_platform(home, urls)
    page = f"{urls['airflow']}/mlcd/"
    relinked = relink_pages(urls["mlflow"], get_settings().model_name, os.environ.get("MLCD_PAGE_URL") or page)
    click.echo(f"Airflow UI : {urls['airflow']}   (login {urls['login']})")
    click.echo(f"mlcd page  : {page}   (in the Airflow UI: Browse -> mlcd rollouts)")
    click.echo(f"MLflow UI  : {urls['mlflow']}" + (f"   ({relinked} versions relinked to this page)" if relinked else ""))
    if not no_gateway:
        click.echo(f"Gateway    : {urls['gateway']}   (/predict, /metrics, /healthz)")
    click.echo(f"Logs       : {urls['logs']}")
    click.echo(f"CLI        : MLCD_HOME={home} mlcd status   (finds this platform and its admin token)")
    click.echo("Stop with: make down")


def relink_pages(tracking_uri: str, model_name: str, base: str) -> int:
    """Point every version's ``mlcd.page_url`` (and mlcd's line of its description) at the page as served now.

    A state started elsewhere (the demo's temporary ports, another host) left links to an address that is gone;
    rewritten at start, MLflow's "rollout chart" links follow the platform. A registry that cannot be read leaves
    the links as they are (the platform is up all the same). Returns how many versions were rewritten.
    """
    from mlflow.exceptions import MlflowException

    from mlcd.registry import ModelRegistry, RegistryError
    from mlcd.registry.tags import TAG_PAGE_URL
    from mlcd.registry.task import link_page

    base = base if base.endswith("/") else base + "/"
    registry = ModelRegistry(tracking_uri, model_name)
    try:
        stale = [str(v.version) for v in registry.list_versions()
                 if (v.tags or {}).get(TAG_PAGE_URL) and not str(v.tags[TAG_PAGE_URL]).startswith(base)]
        for version in stale:
            link_page(registry, version, base)
    except (RegistryError, MlflowException, OSError) as err:
        click.echo(f"warning: MLflow links to the mlcd page not refreshed: {str(err).splitlines()[0]}", err=True)
        return 0
    return len(stale)


@click.command("down")
def down_command() -> None:
    """Stop every service that `mlcd up` started."""
    from mlcd.homestate import forget_platform, home_dir
    from mlcd.platform import down

    stopped = down()
    forget_platform(home_dir())
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
