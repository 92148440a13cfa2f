"""Containers of the project's own images for the rehearsal: built by ``deploy/docker/build.sh``, run by podman.

A pod is one container with exactly what its spec gives it, and nothing of this machine:

* the environment is the spec's (passed by name with ``-e NAME``, so no value shows in ``ps``);
* the root filesystem is read-only, and the image's ``VOLUME`` declarations are ignored (Kubernetes ignores them
  too): the only writable paths are the spec's ``emptyDir`` mounts, each a fresh tmpfs;
* no host path is mounted; the container runs as the spec's user;
* ``--network host`` only because the rehearsal's services (S3, MLflow, Postgres, Prometheus) listen on 127.0.0.1.

The flags every podman call needs on these machines (``--cgroup-manager=cgroupfs``, ``--runtime runc``, the
ulimits) are in :data:`PODMAN` and :data:`RUN_FLAGS`. :func:`launch_gateway_pod` has the signature of
``tests.rehearsal.kube.PodLauncher``: the serving stand-in starts its gateway pods with it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.rehearsal.services import REPO, Proc, cleanup, track, untrack

PODMAN = ["podman", "--cgroup-manager=cgroupfs"]
RUN_FLAGS = ["--runtime", "runc", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", "--network", "host"]
TAG = os.environ.get("MLCD_IMAGE_TAG", "0.1.0")
IMAGES = {role: f"ghcr.io/mlcd/{role}:{TAG}" for role in ("gateway", "trainer", "airflow")}
# The gateway Deployments' writable paths (deploy/k8s/gateway-deployment-*.yaml: emptyDirs `state` and `tmp`).
GATEWAY_STATE = "/var/lib/mlcd"
GATEWAY_EMPTY_DIRS = (GATEWAY_STATE, "/tmp")
GATEWAY_USER = "10001:10001"  # the Deployments' runAsUser (fsGroup 10001)
# 2 cores are shared by every process of the rehearsal: these stand for the pods' CPU limits.
CPU_BOUND_ENV = {"OMP_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1",
                 "MLFLOW_DISABLE_TELEMETRY": "true"}

# Variables the podman client reads for itself: given to the container as KEY=VALUE (none of them is a secret).
CLIENT_OWN = {"PATH", "HOME", "TMPDIR", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "CONTAINERS_CONF"}

_built: dict[str, float] = {}
_build_lock = threading.Lock()


def podman_available() -> str | None:
    """Why containers cannot run here, or ``None`` when they can (podman, runc)."""
    missing = [tool for tool in ("podman", "runc") if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists()]
    return f"missing {', '.join(missing)} (.ci/run installs podman, buildah, runc, mmdebstrap, uidmap)" if missing else None


def ensure_images(*roles: str) -> dict[str, float]:
    """Build the roles' images from this checkout (layer-cached: an unchanged tree costs seconds); once a session.

    Returns the seconds each build took in this call (0.0 for one already built in this session).
    """
    reason = podman_available()
    if reason:
        raise RuntimeError(f"cannot build images: {reason}")
    with _build_lock:
        todo = [role for role in roles if role not in _built]
        if todo:
            start = time.monotonic()
            done = subprocess.run([str(REPO / "deploy/docker/build.sh"), *todo], capture_output=True, text=True,
                                  timeout=3600)
            if done.returncode != 0:
                raise RuntimeError(f"deploy/docker/build.sh {' '.join(todo)} failed:\n{done.stderr[-4000:]}")
            for line in done.stdout.splitlines():  # "role image 12s size"
                parts = line.split()
                if len(parts) == 4 and parts[0] in todo:
                    _built[parts[0]] = float(parts[2].rstrip("s"))
            for role in todo:
                _built.setdefault(role, time.monotonic() - start)
        return {role: _built[role] if role in todo else 0.0 for role in roles}


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args[:3])}…: exit {done.returncode}: {done.stderr.strip()[-2000:]}")
    return done


@dataclass(eq=False)
class Container:
    """One container, started attached (``podman run``) so that the client process lives exactly as long as it.

    Args:
        name: the container's name (unique per rehearsal: a pid and a counter are appended).
        image: the image to run.
        command: the command and arguments (``None``: the image's own).
        env: the container's whole environment besides the image's ``ENV``.
        empty_dirs: the writable paths, each a fresh tmpfs (a pod's emptyDir volumes).
        user: ``uid:gid`` (a pod's securityContext).
        log: where the container's stdout and stderr go.
    """

    name: str
    image: str
    command: Sequence[str] | None
    env: Mapping[str, str]
    empty_dirs: Sequence[str]
    user: str
    log: Path
    entrypoint: str | None = None  # replaces the image's ENTRYPOINT (e.g. "bash" for a shell command)
    proc: Proc | None = None
    keep: bool = False  # leave the stopped container for `podman diff` / `podman logs` (removed by remove())
    started_at: float = field(default=0.0)

    def argv(self) -> list[str]:
        argv = [*PODMAN, "run", "--name", self.name, *RUN_FLAGS, "--read-only", "--read-only-tmpfs=false",
                "--image-volume", "ignore", "--user", self.user, "--cap-drop", "all",
                "--security-opt", "no-new-privileges", "--pull", "never"]
        if not self.keep:
            argv.append("--rm")
        for path in self.empty_dirs:
            # U: owned by the container's user, as an emptyDir is writable by the pod's (podman leaves a tmpfs
            # over a folder of the image root-owned 0755 otherwise, whatever mode= says).
            argv += ["--tmpfs", f"{path}:rw,U,mode=1777"]
        if self.entrypoint is not None:
            argv += ["--entrypoint", self.entrypoint]
        for key, value in self.env.items():
            if key in CLIENT_OWN:  # the podman client needs its own (its TMPDIR is on this machine, not in a pod)
                argv += ["-e", f"{key}={value}"]
            else:
                argv += ["-e", key]  # the value comes from this client's environment: it never shows in `ps`
        argv.append(self.image)
        argv += list(self.command or [])
        return argv

    def start(self) -> Container:
        podman("rm", "--force", "--ignore", self.name, check=False)  # a leftover of a killed run
        client_env = {**{k: v for k, v in self.env.items() if k not in CLIENT_OWN},
                      "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root")}
        self.proc = Proc(self.name, self.argv(), client_env, self.log.parent, self.log)
        self.started_at = time.monotonic()
        self.proc.start()
        untrack(self.proc)  # the container is tracked instead: its stop() removes the container too
        track(self)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def wait(self, timeout: float) -> int:
        """The container's exit code (it is stopped when it outlives ``timeout``)."""
        assert self.proc is not None and self.proc.process is not None
        try:
            return self.proc.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def diff(self) -> list[str]:
        """What the container changed in its image's filesystem (``podman diff``; kept containers only)."""
        return [line for line in podman("diff", self.name).stdout.splitlines() if line.strip()]

    def stop(self) -> None:
        """SIGTERM through the attached client (podman proxies it), SIGKILL after 20 s, and the container removed."""
        if self.proc is not None:
            self.proc.stop(timeout=20)
        if not self.keep:
            self.remove()
        untrack(self)

    def remove(self) -> None:
        podman("rm", "--force", "--ignore", self.name, check=False)


_counter = 0
_counter_lock = threading.Lock()


def unique_name(prefix: str) -> str:
    global _counter
    with _counter_lock:
        _counter += 1
        return f"mlcd-rehearsal-{prefix}-{os.getpid()}-{_counter}"


# ---------------------------------------------------------------------------------------------- gateway pods
def probe(url: str, path: str) -> bool:
    try:
        import urllib.request

        with urllib.request.urlopen(f"{url}{path}", timeout=2) as resp:  # noqa: S310 - loopback
            return bool(200 <= resp.status < 300)
    except (OSError, ValueError):
        return False


@dataclass(eq=False)
class GatewayContainer:
    """A pod of a gateway Deployment: a container of the gateway image (what ``kube.PodHandle`` asks)."""

    container: Container
    port: int
    root: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ready(self) -> bool:
        return self.alive() and probe(self.url, "/v2/health/ready")

    def alive(self) -> bool:
        return self.container.alive()

    def stop(self) -> None:
        self.container.stop()
        cleanup(self.root)


def gateway_env(version: str, env: Mapping[str, str], port: int) -> dict[str, str]:
    """A gateway pod's environment: the Deployment's pod-template env, pinned to ``version``.

    ``MLCD_HOME`` is the Deployment's ``state`` emptyDir inside the container (a host folder cannot be there);
    ``MLCD_PORT`` tells the image's HEALTHCHECK the port the command listens on.
    """
    drop = {"PATH", "HOME", "TMPDIR", "PYTHONPATH", "LANG"}  # the image's own, never the host's
    out = {k: v for k, v in env.items() if k not in drop}
    out.update(CPU_BOUND_ENV)
    out.update({"MLCD_SERVE_VERSION": version, "MLCD_HOME": GATEWAY_STATE, "MLCD_PORT": str(port)})
    return out


def launch_gateway_pod(version: str, env: Mapping[str, str], port: int, root: Path) -> GatewayContainer:
    """Start one pod of a gateway Deployment as a container; returns at once (readiness comes later).

    The command is the image's ``python -m mlcd.serving`` on 127.0.0.1 (a pod binds its own IP; with the host's
    network a container must not listen on every interface of this machine).
    """
    root.mkdir(parents=True, exist_ok=True)
    variant = env.get("MLCD_SERVE_VARIANT", "stable")
    container = Container(unique_name(f"gateway-{variant}-v{version}"), IMAGES["gateway"],
                          ["python", "-m", "mlcd.serving", "--port", str(port)], gateway_env(version, env, port),
                          GATEWAY_EMPTY_DIRS, GATEWAY_USER, root / "gateway.log")
    return GatewayContainer(container.start(), port, root)
