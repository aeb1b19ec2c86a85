"""Who may teach the shared index, and how fast: a bearer token and a per-client token bucket.

Teaching *the shared index* (what every visitor's retrieval answers from) is off unless the operator allows it:

- ``FTRAG_TEACH_SHARED=1`` (``python app.py --teach-shared``): anyone who can reach the app may teach it, except on
  a Hugging Face Space (``SPACE_ID`` set), where that is never on without a token;
- ``FTRAG_TEACH_TOKEN`` set: teaching it (API and UI) needs the token (``Authorization: Bearer <token>``), anywhere.

Otherwise the page's Teach tab still works for the visitor's own session (see `serving.ui`): examples taught there
change only that visitor's answers.
- Every client may teach at most ``FTRAG_TEACH_PER_MINUTE`` examples per minute (default 120), in bursts of up to
  that many.
"""

from __future__ import annotations

import hmac
import os
import threading
import time
from dataclasses import dataclass, field

SHARED_ENV_VAR = "FTRAG_TEACH_SHARED"


class Refused(ValueError):
    """A request that is understood but not allowed; `status` is the HTTP status that says why (401, 403, 429)."""

    def __init__(self, message: str, status: int, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


@dataclass
class RateLimiter:
    """A token bucket per client: `per_minute` tokens a minute, holding at most `per_minute`.

    >>> limiter = RateLimiter(per_minute=60)
    >>> limiter.take("a", 60, now=0.0), limiter.take("a", 1, now=0.0), limiter.take("a", 1, now=1.0)
    (0.0, 1.0, 0.0)
    """

    per_minute: int = 120
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def take(self, client: str, n: int, now: float | None = None) -> float:
        """Spend `n` tokens of `client`'s bucket: 0.0 when allowed, else the seconds to wait (nothing spent)."""
        now = time.monotonic() if now is None else now
        rate = self.per_minute / 60.0
        with self._lock:
            tokens, last = self._buckets.get(client, (float(self.per_minute), now))
            tokens = min(float(self.per_minute), tokens + (now - last) * rate)
            if n > tokens:
                self._buckets[client] = (tokens, now)
                return (n - tokens) / rate
            self._buckets[client] = (tokens - n, now)
            if len(self._buckets) > 10_000:  # forget the buckets touched longest ago: they are (nearly) full again
                for key in sorted(self._buckets, key=lambda k: self._buckets[k][1])[:5_000]:
                    del self._buckets[key]
            return 0.0


@dataclass
class TeachPolicy:
    """Whether a teach (or an undo) may change the shared index; see the module docstring for the rules."""

    token: str | None = None
    public: bool = False
    shared: bool = False
    limiter: RateLimiter = field(default_factory=RateLimiter)

    @classmethod
    def from_env(cls) -> TeachPolicy:
        per_minute = int(os.environ.get("FTRAG_TEACH_PER_MINUTE", "120"))
        if per_minute < 1:
            raise ValueError(f"FTRAG_TEACH_PER_MINUTE must be at least 1, got {per_minute}")
        return cls(
            token=os.environ.get("FTRAG_TEACH_TOKEN") or None,
            public=bool(os.environ.get("SPACE_ID")),
            shared=os.environ.get(SHARED_ENV_VAR, "").strip().lower() in {"1", "true", "yes", "on"},
            limiter=RateLimiter(per_minute=per_minute),
        )

    @property
    def open(self) -> bool:
        """True when the shared index may be taught at all (a token is set, or the operator allowed it off a Space)."""
        return self.token is not None or (self.shared and not self.public)

    def require_open(self) -> None:
        """Raise `Refused` (403) when nobody may teach the shared index here."""
        if not self.open:
            how = "set a token" if self.public else f"set {SHARED_ENV_VAR}=1 or a token"
            raise Refused(
                f"teaching the shared index is off on this app (the operator can {how}); in the page, Teach still "
                "works for your own session",
                403,
            )

    def check(self, given_token: str | None, client: str, examples: int = 1) -> None:
        """Raise `Refused` unless this client may teach `examples` examples now.

        The allowance is spent before the token is compared, so guessing the token is rate-limited too.
        """
        self.require_open()
        if examples > self.limiter.per_minute:
            raise Refused(f"at most {self.limiter.per_minute} examples per minute may be taught; send fewer", 400)
        wait = self.limiter.take(client or "?", examples)
        if wait:
            raise Refused(f"too many taught examples from this client; try again in {wait:.0f} s", 429, wait)
        if self.token is not None and not _same(given_token, self.token):
            raise Refused("teaching needs the operator's token (Authorization: Bearer <token>)", 401)


def _same(given: str | None, token: str) -> bool:
    """A constant-time comparison that also survives text that is not valid Unicode."""
    if not given:
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), token.encode("utf-8", "surrogatepass"))


PROXIES_ENV_VAR = "FTRAG_TRUSTED_PROXIES"


def trusted_proxies() -> str | None:
    """The proxies whose ``X-Forwarded-For`` names the client (``FTRAG_TRUSTED_PROXIES``: comma-separated addresses
    or networks, as uvicorn's ``forwarded_allow_ips`` takes them), or None: the header is then ignored from everyone.

    Trusting it from a peer that is not a proxy would let that peer pick a new identity per request, and so void
    every per-client rule (the teach allowance, one study at a time)."""
    return os.environ.get(PROXIES_ENV_VAR, "").strip() or None


def client_of(request) -> str:
    """Who is asking, for the per-client rules: the peer address of the connection, or the address a trusted proxy
    forwarded (see `trusted_proxies`; uvicorn puts it in place of the peer's)."""
    client = getattr(request, "client", None)
    return getattr(client, "host", None) or "?"


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None.

    >>> bearer_token("Bearer s3cret"), bearer_token("Basic abc"), bearer_token(None)
    ('s3cret', None, None)
    """
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None
