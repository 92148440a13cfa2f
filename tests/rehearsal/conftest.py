"""Session fixtures of the cluster rehearsal: each real service started once, on 127.0.0.1, and stopped at the end.

Postgres holds three databases (Airflow metadata, MLflow backend store, mlcd ledger); moto's S3 server holds the
mlcd storage and MLflow's artifacts; Redis is the Celery broker. Fixtures are lazy: the pod contract needs only
Postgres, S3 and MLflow; the flow needs everything.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.pgserver import PostgresServer
from tests.rehearsal.services import (
    MlflowServer,
    Prometheus,
    Redis,
    S3Server,
    private_tmp,
    stop_leftovers,
    track,
    untrack,
)

STORAGE_BUCKET = "mlcd-data"
ARTIFACT_BUCKET = "mlcd-mlflow"
DATABASES = ("airflow", "mlflow", "mlcd")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The whole directory is one layer: marker `rehearsal` (pyproject), selected with -m rehearsal.
    for item in items:
        if "tests/rehearsal/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.rehearsal)


def pytest_unconfigure(config: pytest.Config) -> None:
    leftovers = stop_leftovers()
    if leftovers:
        print(f"rehearsal: stopped servers a fixture left running: {', '.join(leftovers)}")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """Debian's PostgreSQL (tests/pgserver.py, run as the postgres user when we are root) with three databases."""
    pg = track(PostgresServer(max_connections=300).start())
    try:
        for name in DATABASES:
            pg.create_database(name)
        yield pg
    finally:
        untrack(pg)
        pg.stop()


@pytest.fixture(scope="session")
def redis() -> Iterator[Redis]:
    server = Redis(private_tmp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
    server = S3Server(private_tmp("s3"), (STORAGE_BUCKET, ARTIFACT_BUCKET)).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mlflow_service(postgres: PostgresServer, s3: S3Server) -> Iterator[MlflowServer]:
    server = MlflowServer(private_tmp("mlflow"), postgres.url("mlflow"), f"s3://{ARTIFACT_BUCKET}/artifacts", s3)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def prometheus() -> Iterator[Prometheus]:
    server = Prometheus(private_tmp("prometheus")).start()
    try:
        yield server
    finally:
        server.stop()


@dataclass(frozen=True)
class ClusterSettings:
    """The settings a cluster deployment gives every mlcd process (what the README's table lists)."""

    storage_url: str
    storage_options: str
    ledger_url: str
    tracking_uri: str
    aws: dict[str, str]

    def env(self) -> dict[str, str]:
        return {"MLCD_STORAGE_URL": self.storage_url, "MLCD_STORAGE_OPTIONS": self.storage_options,
                "MLCD_LEDGER_URL": self.ledger_url, "MLFLOW_TRACKING_URI": self.tracking_uri, **self.aws}


@pytest.fixture(scope="session")
def cluster_settings(postgres: PostgresServer, s3: S3Server, mlflow_service: MlflowServer) -> ClusterSettings:
    aws = {k: v for k, v in s3.aws_env.items() if k != "AWS_ENDPOINT_URL"}  # the endpoint goes in the options
    return ClusterSettings(
        storage_url=f"s3://{STORAGE_BUCKET}/mlcd",
        storage_options=json.dumps({"endpoint_url": s3.endpoint}),
        ledger_url=postgres.url("mlcd"),
        tracking_uri=mlflow_service.url,
        aws=aws,
    )
