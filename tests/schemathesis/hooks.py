"""Schemathesis hooks for `tests/tests/schemathesis.rs`.

The OpenAPI document states every rule of the admin API that JSON Schema can
say. Two it cannot, and its descriptions say in words: the limits of one
plan or key have different names, and a new key's expiry is in the future.
A request that keeps to the schema but breaks one of those is refused (422),
rightly, so a valid request generated from the schema is made to keep them
too: repeated limit names get a suffix, an expiry in the past moves a year
ahead.

And the run is bounded in time: a write may be asked to wait up to 30 s for
the proxies to apply it, and a sync poll to be held up to 60 s, which the
server honours (a proxy the fuzzer names in the `Tollgate-Proxy-*` headers
never applies anything). Such waits are cut to at most a second.

Only positive cases are changed; a negative one must stay invalid.
"""

from datetime import datetime, timedelta, timezone

import schemathesis

# Operations whose body may carry `limits` or `expires_at`.
WITH_LIMITS = {
    ("POST", "/v1/plans"),
    ("PATCH", "/v1/plans/{id}"),
    ("POST", "/v1/tenants/{tenant_id}/keys"),
    ("POST", "/v1/tenants/{tenant_id}/keys/batch"),
    ("PATCH", "/v1/keys/{id}"),
}


def distinct_names(limits):
    seen = set()
    for limit in limits:
        if not isinstance(limit, dict) or not isinstance(limit.get("name"), str):
            continue
        name, n = limit["name"], 1
        while name in seen or name == "monthly":
            # A suffix in the limit name's alphabet, kept within 64 characters.
            name = f"{limit['name'][:58]}-{n}"
            n += 1
        limit["name"] = name
        seen.add(name)


def in_the_future(text):
    """A year from now if `text` is a time not at least a minute ahead."""
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return text
    if at.tzinfo is None:
        return text
    now = datetime.now(timezone.utc)
    if at > now + timedelta(minutes=1):
        return text
    return (now + timedelta(days=365)).strftime("%Y-%m-%dT%H:%M:%SZ")


def shorter_waits(query):
    wait = query.get("wait_for_propagation")
    if isinstance(wait, str) and wait not in ("0s", "0ms"):
        query["wait_for_propagation"] = "1s" if wait.endswith("s") and not wait.endswith("ms") else "1000ms"
    wait_ms = query.get("wait_ms")
    if isinstance(wait_ms, int) and wait_ms > 1000:
        query["wait_ms"] = 1000


@schemathesis.hook
def map_case(context, case):
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return case
    if isinstance(case.query, dict):
        shorter_waits(case.query)
    if (case.method.upper(), case.path) not in WITH_LIMITS or not isinstance(case.body, dict):
        return case
    if isinstance(case.body.get("limits"), list):
        distinct_names(case.body["limits"])
    if isinstance(case.body.get("expires_at"), str):
        case.body["expires_at"] = in_the_future(case.body["expires_at"])
    return case
