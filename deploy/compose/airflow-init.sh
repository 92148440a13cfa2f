#!/usr/bin/env bash
# One-shot set-up of the mlcd container stack, run by the `airflow-init` service before anything else starts:
#   1. hand the named volumes to the Airflow user (uid 50000 in the official image): a fresh named volume is
#      owned by root, and the Airflow services and the MLflow server run as that user;
#   2. migrate Airflow's metadata database (Postgres; idempotent, safe on every `up`);
#   3. write the Simple auth manager's password file from AIRFLOW_ADMIN_PASSWORD, so the login is the one in .env
#      instead of a generated password printed into a log.
# Only step 1 needs root; steps 2 and 3 run as the Airflow user (setpriv keeps the environment, `su` would not).
# Any failure exits non-zero, so nothing that depends on this service starts.
set -euo pipefail

AIRFLOW_UID="${AIRFLOW_UID:-50000}"
: "${AIRFLOW_ADMIN_PASSWORD:?AIRFLOW_ADMIN_PASSWORD is not set}"
: "${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:?the passwords file path is not set}"
: "${MLCD_HOME:?MLCD_HOME is not set}"
AUTH_DIR="$(dirname "${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE}")"

as_airflow() {
  if [ "$(id -u)" = "0" ]; then
    HOME=/home/airflow setpriv --reuid="${AIRFLOW_UID}" --regid=0 --clear-groups -- "$@"
  else
    "$@"
  fi
}

if [ "$(id -u)" = "0" ]; then
  echo "airflow-init: handing the volumes to uid ${AIRFLOW_UID}"
  for dir in /opt/airflow/logs "${MLCD_HOME}" "${AUTH_DIR}" /var/lib/mlflow; do
    mkdir -p "${dir}"
    chown -R "${AIRFLOW_UID}:0" "${dir}"
  done
fi

echo "airflow-init: migrating the metadata database"
as_airflow airflow db migrate

echo "airflow-init: writing the admin password file"
as_airflow python - <<'PY'
import json
import os

path = os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]
users = os.environ.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "admin:admin")
admin = users.split(",")[0].split(":")[0].strip()
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
with os.fdopen(fd, "w", encoding="utf-8") as f:
    json.dump({admin: os.environ["AIRFLOW_ADMIN_PASSWORD"]}, f)
    f.write("\n")
PY
echo "airflow-init: done; log in to Airflow as '${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS%%:*}'"
