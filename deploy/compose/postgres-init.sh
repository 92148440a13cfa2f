#!/usr/bin/env bash
# Creates the three databases of the mlcd stack on the first start of an empty Postgres volume:
#   airflow - Airflow's metadata database, owned by role `airflow`
#   mlflow  - MLflow's backend store (experiments, runs, registry), owned by role `mlflow`
#   mlcd    - mlcd's ledger, registry lease and small shared state (MLCD_LEDGER_URL), owned by role `mlcd`
# The official postgres image runs every *.sh in /docker-entrypoint-initdb.d once, as the superuser, with the
# container's environment; docker-compose.yaml passes the three passwords from .env. Passwords go through psql
# variables (:'var' quotes them as SQL literals), so any character is safe here.
# On a volume that already holds data this script is not run again: change a password with ALTER ROLE, and on a
# volume created before the `mlcd` database existed, run the three `mlcd` statements below by hand.
set -euo pipefail

: "${AIRFLOW_DB_PASSWORD:?AIRFLOW_DB_PASSWORD is not set}"
: "${MLFLOW_DB_PASSWORD:?MLFLOW_DB_PASSWORD is not set}"
: "${MLCD_DB_PASSWORD:?MLCD_DB_PASSWORD is not set}"

psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname postgres \
     -v airflow_password="${AIRFLOW_DB_PASSWORD}" -v mlflow_password="${MLFLOW_DB_PASSWORD}" \
     -v mlcd_password="${MLCD_DB_PASSWORD}" <<'SQL'
CREATE ROLE airflow LOGIN PASSWORD :'airflow_password';
CREATE DATABASE airflow OWNER airflow ENCODING 'UTF8';
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_password';
CREATE DATABASE mlflow OWNER mlflow ENCODING 'UTF8';
CREATE ROLE mlcd LOGIN PASSWORD :'mlcd_password';
CREATE DATABASE mlcd OWNER mlcd ENCODING 'UTF8';
-- No role may open another's database.
REVOKE CONNECT ON DATABASE airflow FROM PUBLIC;
REVOKE CONNECT ON DATABASE mlflow FROM PUBLIC;
REVOKE CONNECT ON DATABASE mlcd FROM PUBLIC;
GRANT CONNECT ON DATABASE airflow TO airflow;
GRANT CONNECT ON DATABASE mlflow TO mlflow;
GRANT CONNECT ON DATABASE mlcd TO mlcd;
SQL
