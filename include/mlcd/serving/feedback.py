"""Stateless prediction ids and labels taken exactly once, by any gateway replica, across restarts.

A label needs to know what was predicted: model, version, variant and class. Kept in one replica's memory, that
is lost when the label reaches another replica behind the same Service, or the same one after a restart (a 404
on a cluster, where the accuracy check then never has data). So the prediction id *carries* it:

    id   = base64url(nonce ‖ ciphertext) "." hex(HMAC-SHA256(mac_key, nonce ‖ ciphertext))[:32]
    text = JSON [model, version, variant, predicted class, expiry (epoch s), unrandomised reason or null]

The text is encrypted (an HMAC-SHA256 keystream per nonce, encrypt-then-MAC) because a client must not read
which variant served it (``MLCD_EXPOSE_VARIANT=false``), and authenticated so that nobody can make up an id or
change its class. Both keys derive from ``MLCD_GATEWAY_SECRET``, which every replica shares (a Kubernetes
Secret / a compose secret); without it each process has a random key and its ids die with it.

Replay protection is the one piece of shared state: the id's nonce is inserted into ``mlcd_feedback_labels`` in
the ledger database (``MLCD_LEDGER_URL``: PostgreSQL on a cluster) with ``INSERT ... ON CONFLICT DO NOTHING``,
so of any number of replicas receiving the same label concurrently exactly one counts it. Rows are kept until
the id expires (after that the expiry refuses it anyway) and purged then.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass
from enum import Enum

from sqlalchemy import Column, Float, MetaData, String, Table, delete
from sqlalchemy.engine import Engine

from mlcd import sql

NONCE_BYTES = 12
MAC_HEX = 32  # 128 bits of HMAC-SHA256
DEFAULT_TTL_S = 7 * 24 * 3600.0  # labels from people arrive late; a week of replay rows is small
PURGE_EVERY = 1000  # claims between two purges of expired rows

_META = MetaData()
_LABELS = Table(
    "mlcd_feedback_labels",
    _META,
    Column("nonce", String(32), primary_key=True),
    Column("expires_at", Float, nullable=False, index=True),
    Column("labelled_at", Float, nullable=False),
)


class Refusal(str, Enum):
    """Why a label was not taken (the HTTP status is :data:`STATUS`)."""

    BAD_SIGNATURE = "bad_signature"
    EXPIRED = "expired"
    OTHER_MODEL = "other_model"
    ALREADY_LABELLED = "already_labelled"


STATUS = {Refusal.BAD_SIGNATURE: 403, Refusal.EXPIRED: 404, Refusal.OTHER_MODEL: 422,
          Refusal.ALREADY_LABELLED: 409}


class LabelRefused(ValueError):
    def __init__(self, reason: Refusal, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = STATUS[reason]


@dataclass(frozen=True)
class Prediction:
    """What a prediction id says (after its signature was checked)."""

    model: str
    version: str
    variant: str
    predicted: int
    expires_at: float
    nonce: str  # hex; the replay key
    unrandomised: str | None = None  # why the prediction was not randomised (mlcd.serving.evidence.Unrandomised)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class PredictionIds:
    """Issues and reads prediction ids under keys derived from the shared secret.

    Args:
        secret: ``MLCD_GATEWAY_SECRET`` (the same on every replica); None: a random key for this process.
        ttl_s: how long an id can be labelled.
    """

    def __init__(self, secret: str | None, ttl_s: float = DEFAULT_TTL_S) -> None:
        root = hashlib.sha256(b"mlcd-prediction-id:" + secret.encode()).digest() if secret \
            else secrets.token_bytes(32)
        self._mac_key = hmac.new(root, b"mac", hashlib.sha256).digest()
        self._enc_key = hmac.new(root, b"enc", hashlib.sha256).digest()
        self.ttl_s = float(ttl_s)

    def _keystream(self, nonce: bytes, n: int) -> bytes:
        blocks = (hmac.new(self._enc_key, nonce + i.to_bytes(4, "big"), hashlib.sha256).digest()
                  for i in range((n + 31) // 32))
        return b"".join(blocks)[:n]

    def _mac(self, body: bytes) -> str:
        return hmac.new(self._mac_key, body, hashlib.sha256).hexdigest()[:MAC_HEX]

    def issue(self, model: str, version: str, variant: str, predicted: int, now: float | None = None,
              unrandomised: str | None = None) -> str:
        """A new id for one predicted image (``unrandomised``: why its label is not evidence, if it is not)."""
        expires = int((time.time() if now is None else now) + self.ttl_s)
        text = json.dumps([model, str(version), variant, int(predicted), expires, unrandomised],
                          separators=(",", ":")).encode()
        nonce = secrets.token_bytes(NONCE_BYTES)
        body = nonce + bytes(a ^ b for a, b in zip(text, self._keystream(nonce, len(text)), strict=True))
        return f"{_b64(body)}.{self._mac(body)}"

    def read(self, pid: str) -> Prediction:
        """The prediction ``pid`` names; :class:`LabelRefused` (bad signature) for anything not issued here."""
        encoded, dot, mac = pid.partition(".")
        forged = LabelRefused(Refusal.BAD_SIGNATURE, "prediction_id was not issued by this gateway (bad signature)")
        if not dot or len(mac) != MAC_HEX or not encoded:
            raise forged
        try:
            body = _unb64(encoded)
        except (ValueError, TypeError):
            raise forged from None
        if len(body) <= NONCE_BYTES or not hmac.compare_digest(mac.encode(), self._mac(body).encode()):
            raise forged
        nonce, cipher = body[:NONCE_BYTES], body[NONCE_BYTES:]
        try:
            model, version, variant, predicted, expires, unrandomised = json.loads(
                bytes(a ^ b for a, b in zip(cipher, self._keystream(nonce, len(cipher)), strict=True)))
        except (ValueError, TypeError):  # signed by us, so never; but a wrong shape must not become a 500
            raise forged from None
        return Prediction(str(model), str(version), str(variant), int(predicted), float(expires), nonce.hex(),
                          None if unrandomised is None else str(unrandomised))


class LabelLedger:
    """Which prediction ids were labelled, in the ledger database shared by every replica.

    Args:
        url: SQLAlchemy URL or SQLite path (default :func:`mlcd.sql.ledger_url`: ``MLCD_LEDGER_URL``).
    """

    def __init__(self, url: str | None = None) -> None:
        self.url = sql.ledger_url(url)
        self._engine: Engine | None = None
        self._lock = threading.Lock()
        self._claims = 0

    def _connect(self) -> Engine:
        with self._lock:
            if self._engine is None:  # first label: a gateway that never gets one never touches the database
                engine = sql.engine(self.url)
                sql.ensure_schema(engine, _META)
                self._engine = engine
            return self._engine

    def claim(self, prediction: Prediction, now: float | None = None) -> bool:
        """True for the first claim of this id anywhere; False when it was labelled before (a replay)."""
        now = time.time() if now is None else now
        engine = self._connect()
        with engine.begin() as conn:
            won = sql.insert_if_absent(conn, _LABELS, {"nonce": prediction.nonce, "expires_at": prediction.expires_at,
                                                       "labelled_at": now})
        with self._lock:
            self._claims += 1
            purge = self._claims % PURGE_EVERY == 0
        if purge:
            self.purge(now)
        return won

    def purge(self, now: float | None = None) -> int:
        """Forget ids that expired (they are refused by their expiry now); returns how many."""
        now = time.time() if now is None else now
        with self._connect().begin() as conn:
            return int(conn.execute(delete(_LABELS).where(_LABELS.c.expires_at < now)).rowcount or 0)


def take_label(ids: PredictionIds, ledger: LabelLedger, model: str, pid: str,
               now: float | None = None) -> Prediction:
    """Check ``pid`` and claim it once; the prediction it names, or :class:`LabelRefused` with the reason.

    Cheap checks first (signature, expiry, model), so a forged or stale id never reaches the database.
    """
    now = time.time() if now is None else now
    prediction = ids.read(pid)
    if prediction.expires_at < now:
        raise LabelRefused(Refusal.EXPIRED, f"expired prediction_id (labels are taken for {ids.ttl_s:.0f}s after "
                                            "the prediction)")
    if prediction.model != model:
        raise LabelRefused(Refusal.OTHER_MODEL, f"prediction_id is of model {prediction.model!r}; this gateway "
                                                f"serves {model!r}")
    if not ledger.claim(prediction, now):
        raise LabelRefused(Refusal.ALREADY_LABELLED, "prediction_id already labelled: a label is taken once")
    return prediction
