"""Load a logged model and predict: the one contract evaluation and serving share.

The model contract (every model builder must keep it): input is raw pixels, float32 ``N×28×28`` in 0–255
(preprocessing lives inside the model, so training, evaluation and serving cannot disagree about it); output is
``N×10`` logits. Models are logged in MLflow's TensorFlow/Keras flavour, loaded from ``runs:/…`` or
``models:/name@alias`` URIs.

A model version is code unless it is loaded carefully, so loading is done here rather than by
``mlflow.tensorflow.load_model`` (which puts the artifact's ``code/`` folder on ``sys.path``, imports the module
its MLmodel names and may unpickle custom objects). What was fetched is loaded only if its SHA-256 digest
matches the one the training run recorded (:data:`TAG_MODEL_SHA256`, and, when a signing key is configured,
an HMAC signature of it), and only as Keras' native ``.keras`` format with ``safe_mode=True`` and no custom
code. Anything else raises :class:`ArtifactIntegrityError` with a one-line reason.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return np.asarray(exp / exp.sum(axis=1, keepdims=True))


@dataclass
class Predictor:
    """A loaded Keras model with the mlcd contract."""

    model: Any
    model_uri: str

    def predict_logits(self, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """Logits for raw-pixel images ``N×28×28`` (any numeric dtype)."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 2:
            x = x[None, ...]
        out = []
        for start in range(0, len(x), batch_size):
            # Calling the model directly avoids predict()'s per-call tf.function and callback overhead,
            # which dominates for the small batches serving sees.
            out.append(np.asarray(self.model(x[start : start + batch_size], training=False)))
        if not out:
            return np.zeros((0, NUM_CLASSES), dtype=np.float32)
        return np.concatenate(out).astype(np.float32)

    def predict_proba(self, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        return softmax(self.predict_logits(x, batch_size=batch_size))

    def predict_classes(self, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        return self.predict_logits(x, batch_size=batch_size).argmax(axis=1)


# --- artifact integrity ---------------------------------------------------------------------------------------

# Tags the training run records on its logged model (and on the run): the digest of the model artifact it
# logged, and optionally an HMAC-SHA256 of that digest with the deployment's signing key.
TAG_MODEL_SHA256 = "mlcd.model_sha256"
TAG_MODEL_SIGNATURE = "mlcd.model_signature"
# The signing key (from a Kubernetes Secret or an Airflow Connection turned into the environment).
SIGNING_KEY_ENV = "MLCD_MODEL_SIGNING_KEY"
# Written by MLflow's client into the download of a ``models:/name/version`` URI, not part of what was logged.
_CLIENT_WRITTEN = frozenset({"registered_model_meta"})
_RUNS_URI = re.compile(r"runs:/([0-9a-f]{32})/(.+)")
_LOGGED_MODEL_URI = re.compile(r"models:/(m-[0-9a-f]{32})/?")
_VERSION_URI = re.compile(r"models:/([^/@]+)/([0-9]+)/?")
_ALIAS_URI = re.compile(r"models:/([^/@]+)@([A-Za-z0-9_-]+)/?")


class ArtifactIntegrityError(Exception):
    """A model artifact that must not be loaded: digest mismatch, no recorded digest, bad signature, custom code.

    The gateway refuses such a version (a canary answers ``409`` to the router), evaluation fails its task.
    """


def artifact_digest(root: str | Path) -> str:
    """SHA-256 over every file of a model artifact folder: ``relative/path NUL sha256(file)`` lines, sorted.

    Raises:
        ArtifactIntegrityError: the folder holds a symlink (it could point outside what was digested).
    """
    root = Path(root)
    lines = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            raise ArtifactIntegrityError(f"the model artifact holds a symlink ({rel})")
        if not path.is_file() or rel in _CLIENT_WRITTEN:
            continue
        h = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        lines.append(f"{rel}\0{h.hexdigest()}\n")
    if not lines:
        raise ArtifactIntegrityError("the model artifact is empty")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def sign_digest(digest: str, key: str) -> str:
    """HMAC-SHA256 of ``digest`` with ``key``, hex."""
    return hmac.new(key.encode(), digest.encode(), hashlib.sha256).hexdigest()


def signing_key(explicit: str | None = None) -> str | None:
    """The model signing key: ``explicit``, else ``MLCD_MODEL_SIGNING_KEY``, else ``None`` (digest only)."""
    return explicit or os.environ.get(SIGNING_KEY_ENV) or None


def _client(tracking_uri: str | None) -> Any:
    import mlflow
    from mlflow import MlflowClient

    uri = tracking_uri or mlflow.get_tracking_uri()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _logged_model_id_of_run(client: Any, run_id: str, name: str) -> str | None:
    run = client.get_run(run_id)
    outputs = getattr(getattr(run, "outputs", None), "model_outputs", None) or []
    for output in reversed(outputs):  # the latest logged wins, as in mlflow.register_model
        if client.get_logged_model(output.model_id).name == name:
            return str(output.model_id)
    return None


@dataclass(frozen=True)
class ModelRef:
    """Where a model URI's artifact and its recorded digest live."""

    download_uri: str  # pinned: an alias is resolved once, so the digest and the download name one version
    run_id: str | None
    logged_model_id: str | None


def resolve_model(model_uri: str, tracking_uri: str | None = None) -> ModelRef:
    """Pin ``model_uri`` to a concrete artifact and find the run / logged model that recorded its digest."""
    client = _client(tracking_uri)
    if m := _RUNS_URI.fullmatch(model_uri):
        run_id, name = m.group(1), m.group(2).strip("/")
        return ModelRef(model_uri, run_id, _logged_model_id_of_run(client, run_id, name))
    if m := _LOGGED_MODEL_URI.fullmatch(model_uri):
        return ModelRef(model_uri, getattr(client.get_logged_model(m.group(1)), "source_run_id", None), m.group(1))
    if m := _ALIAS_URI.fullmatch(model_uri):
        mv = client.get_model_version_by_alias(m.group(1), m.group(2))
    elif m := _VERSION_URI.fullmatch(model_uri):
        mv = client.get_model_version(m.group(1), m.group(2))
    else:
        raise ArtifactIntegrityError(f"cannot check the integrity of {model_uri!r}: use runs:/, models:/name/version, "
                                     "models:/name@alias or models:/m-<id>")
    model_id = getattr(mv, "model_id", None)
    if not model_id and (src := _LOGGED_MODEL_URI.fullmatch(str(mv.source or ""))):
        model_id = src.group(1)
    return ModelRef(f"models:/{mv.name}/{mv.version}", mv.run_id or None, model_id)


def recorded_integrity(ref: ModelRef, tracking_uri: str | None = None) -> tuple[str | None, str | None, str]:
    """``(digest, signature, where)`` recorded for the artifact: the logged model's tags, else the run's."""
    client = _client(tracking_uri)
    if ref.logged_model_id:
        tags = dict(client.get_logged_model(ref.logged_model_id).tags or {})
        if TAG_MODEL_SHA256 in tags:
            return tags[TAG_MODEL_SHA256], tags.get(TAG_MODEL_SIGNATURE), f"logged model {ref.logged_model_id}"
    if ref.run_id:
        tags = dict(client.get_run(ref.run_id).data.tags or {})
        if TAG_MODEL_SHA256 in tags:
            return tags[TAG_MODEL_SHA256], tags.get(TAG_MODEL_SIGNATURE), f"run {ref.run_id}"
    return None, None, "nowhere"


def verify_artifact(local: str | Path, model_uri: str, digest: str | None, signature: str | None, where: str,
                    key: str | None = None) -> str:
    """Check a fetched artifact folder against what training recorded; returns its digest.

    Raises:
        ArtifactIntegrityError: no digest recorded, a different digest, or (with a key) a missing or bad signature.
    """
    if not digest:
        raise ArtifactIntegrityError(
            f"{model_uri}: no {TAG_MODEL_SHA256} recorded for it (not sealed by an mlcd training run); refusing to load")
    actual = artifact_digest(local)
    if not hmac.compare_digest(actual, digest):
        raise ArtifactIntegrityError(
            f"{model_uri}: artifact digest {actual[:16]}… does not match the {digest[:16]}… recorded on {where}; "
            "the artifact was changed after training, refusing to load")
    if key is not None:
        if not signature:
            raise ArtifactIntegrityError(f"{model_uri}: a signing key is configured but {where} has no signature")
        if not hmac.compare_digest(sign_digest(digest, key), signature):
            raise ArtifactIntegrityError(f"{model_uri}: the signature on {where} does not match the signing key")
    return actual


def load_keras_artifact(local: str | Path) -> Any:
    """Load a fetched MLflow Keras artifact as plain Keras, ``safe_mode=True``, no custom code or objects.

    Raises:
        ArtifactIntegrityError: the artifact asks for code (``code`` paths, a custom Keras module, pickled
            custom objects) or is not in Keras' native ``.keras`` format.
    """
    import keras
    import yaml

    local = Path(local)
    try:
        conf = yaml.safe_load((local / "MLmodel").read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ArtifactIntegrityError(f"unreadable MLmodel: {err}") from None
    flavors = (conf or {}).get("flavors") or {}
    flavor = flavors.get("keras") or flavors.get("tensorflow")
    if not isinstance(flavor, dict):
        raise ArtifactIntegrityError(f"not a Keras model (flavors: {', '.join(sorted(flavors)) or 'none'})")
    if flavor.get("model_type", "keras") != "keras":
        raise ArtifactIntegrityError(f"model type {flavor.get('model_type')!r} is not a Keras model")
    if flavor.get("code"):
        raise ArtifactIntegrityError("the model ships code (MLmodel 'code' paths); refusing to put it on sys.path")
    data = local / str(flavor.get("data") or "data")
    if any(data.glob("*custom_objects*")):
        raise ArtifactIntegrityError("the model ships pickled custom objects; refusing to unpickle them")
    path = data / "model.keras"
    if not path.is_file():
        raise ArtifactIntegrityError("no data/model.keras: only Keras' native format is loaded")
    try:
        # safe_mode refuses lambda/bytecode deserialisation; compile=False skips optimizer and loss objects,
        # which prediction does not need.
        return keras.models.load_model(path, safe_mode=True, compile=False)
    except (ValueError, TypeError) as err:
        # Keras raises either for what safe mode refuses (a Lambda's bytecode is a TypeError): both mean this
        # artifact will never load, an integrity failure that fails the canary, not a transient error.
        raise ArtifactIntegrityError(f"Keras refused the model in safe mode: {' '.join(str(err).split())[:300]}") from None


def load_predictor(model_uri: str, tracking_uri: str | None = None, key: str | None = None) -> Predictor:
    """Load ``model_uri`` (``runs:/<id>/model``, ``models:/<name>@<alias>``, ``models:/<name>/<version>``).

    The artifact is fetched once into a private temporary folder, checked against the digest (and signature)
    recorded by training, and loaded from that same copy, so what is checked is what runs.

    Raises:
        ArtifactIntegrityError: see :func:`verify_artifact` and :func:`load_keras_artifact`; also logged.
    """
    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    try:
        ref = resolve_model(model_uri, tracking_uri)
        digest, signature, where = recorded_integrity(ref, tracking_uri)
        with tempfile.TemporaryDirectory(prefix="mlcd-model-") as tmp:
            local = mlflow.artifacts.download_artifacts(artifact_uri=ref.download_uri, dst_path=tmp,
                                                        tracking_uri=tracking_uri)
            verify_artifact(local, model_uri, digest, signature, where, signing_key(key))
            try:
                model = load_keras_artifact(local)
            except ArtifactIntegrityError as err:
                raise ArtifactIntegrityError(f"{model_uri}: {err}") from None
    except ArtifactIntegrityError as err:
        log.error("refusing to load %s: %s", model_uri, err)
        raise
    return Predictor(model=model, model_uri=model_uri)
