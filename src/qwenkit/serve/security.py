"""API keys and per-key rate limits."""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections import deque


def bearer_token(authorization: str | None) -> str | None:
    """The key an `Authorization: Bearer KEY` header value presents; None for any other value."""
    if authorization is None or not authorization.lower().startswith("bearer "):
        return None
    return authorization[7:].strip()


def key_id(key: str | None) -> str:
    """A short, non-reversible name for a key, for logs and rate-limit buckets."""
    if not key:
        return "-"
    return hashlib.sha256(key.encode()).hexdigest()[:8]


class ApiKeys:
    """Checks bearer tokens in constant time; no keys configured means open access."""

    def __init__(self, keys: frozenset[str]) -> None:
        self._digests = [hashlib.sha256(k.encode()).digest() for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def check(self, presented: str | None) -> bool:
        if not self._digests:
            return True
        digest = hashlib.sha256((presented or "").encode()).digest()
        ok = False
        for known in self._digests:  # compare against every key: timing does not depend on which
            ok |= hmac.compare_digest(digest, known)
        return ok and bool(presented)


class RateLimiter:
    """Sliding one-minute windows of requests and tokens per bucket (an API key's id)."""

    WINDOW_S = 60.0

    def __init__(self, requests_per_minute: int | None, tokens_per_minute: int | None) -> None:
        self.rpm = requests_per_minute
        self.tpm = tokens_per_minute
        self._requests: dict[str, deque[float]] = {}
        self._tokens: dict[str, deque[tuple[float, int]]] = {}
        self._lock = threading.Lock()

    def admit(self, bucket: str) -> float | None:
        """Record a request; returns None if allowed, else seconds until one would be."""
        now = time.monotonic()
        with self._lock:
            if self.tpm is not None:
                spent = self._trim_tokens(bucket, now)
                if spent >= self.tpm:
                    return self._tokens[bucket][0][0] + self.WINDOW_S - now
            if self.rpm is not None:
                times = self._requests.setdefault(bucket, deque())
                while times and times[0] <= now - self.WINDOW_S:
                    times.popleft()
                if len(times) >= self.rpm:
                    return times[0] + self.WINDOW_S - now
                times.append(now)
        return None

    def spend(self, bucket: str, tokens: int) -> None:
        if self.tpm is None or tokens <= 0:
            return
        with self._lock:
            self._tokens.setdefault(bucket, deque()).append((time.monotonic(), tokens))

    def _trim_tokens(self, bucket: str, now: float) -> int:
        spent = self._tokens.setdefault(bucket, deque())
        while spent and spent[0][0] <= now - self.WINDOW_S:
            spent.popleft()
        return sum(n for _, n in spent)
