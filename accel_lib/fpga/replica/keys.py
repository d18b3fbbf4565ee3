"""THE owner of a service's keys: making them, reading the file a replica is given, checking a call's
``authorization`` value in constant time, and the words of a refusal. The cluster and the replica both import it."""
from __future__ import annotations

import hmac
import secrets
from pathlib import Path

SCHEME = "Bearer "
PER_SERVICE = 2                   # a primary and a secondary key, as Azure ML gives


def new() -> list[str]:
    """A service's fresh keys."""
    return [secrets.token_urlsafe(24) for _ in range(PER_SERVICE)]


def read(path) -> list[str]:
    """The keys in a keys file (one a line), as a replica is given them."""
    return Path(path).read_text().split()


def ok(authorization, keys) -> bool:
    """Whether an ``authorization: Bearer <key>`` value carries one of ``keys``, compared in constant time (every
    key compared, whatever matched)."""
    token = authorization[len(SCHEME):] if authorization and authorization.startswith(SCHEME) else ""
    found = False
    for k in keys:
        found |= hmac.compare_digest(token.encode(), k.encode())
    return found and bool(token)


WAYS = {None: "'authorization", "metadata": "metadata 'authorization", "header": "the header 'Authorization"}


def refusal(how=None) -> str:
    """Why a call was refused, and what to send: ``how`` is "metadata" (gRPC), "header" (HTTP) or None (either)."""
    return f"missing or wrong key: send {WAYS[how]}: {SCHEME}<key>' with a key from service.get_keys()."
