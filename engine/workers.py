"""What SGLang's gateway (`smg`) says about the workers behind a URL, and whether they can serve one A2R role.

A URL given for a role may be an SGLang server or a gateway over several; `describe` tells them apart (only a
gateway has `GET /workers`), so the launcher can refuse a gateway that cannot serve before anything runs.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass

from engine.spec import EngineError, auth

WORKERS_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Worker:
    """One SGLang server behind a gateway, as the gateway describes it."""

    url: str
    model: str
    context_length: int | None
    id: str = ""  # the gateway's name for it: `DELETE /workers/{id}` removes it


def describe(url: str, key: str | None = None) -> list[Worker] | None:
    """The workers the gateway at `url` routes to, or None when `url` answers but is no gateway (an SGLang server
    has no `GET /workers`; one started with a key answers 404 only to a request that carries it)."""
    try:
        request = urllib.request.Request(f"{url}/workers", headers=auth(key))
        with urllib.request.urlopen(request, timeout=WORKERS_TIMEOUT_S) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        # No gateway, or a keyed server asked without its key: the model check that follows names the key.
        if exc.code in (401, 403, 404):
            return None
        raise EngineError(
            f"{url}/workers answered {exc.code}: {exc.read().decode(errors='replace')}"
        ) from None
    except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
        raise EngineError(f"no SGLang server answers at {url} ({getattr(exc, 'reason', exc)})") from None
    except json.JSONDecodeError:
        return None
    if not isinstance(body, dict) or not isinstance(body.get("workers"), list):
        return None
    return [worker(entry) for entry in body["workers"]]


def worker(entry: dict) -> Worker:
    """A worker from one entry of the gateway's `GET /workers`: its model is the one it serves under (SGLang's
    `served_model_name`), its context the one it enforces."""
    models = entry.get("models") or [{}]
    context = entry.get("labels", {}).get("max_model_len") or models[0].get("context_length")
    return Worker(
        entry["url"],
        entry.get("model_id") or models[0].get("id", ""),
        int(context) if context else None,
        entry.get("id", ""),
    )


def answers(url: str, key: str | None = None, timeout: float = WORKERS_TIMEOUT_S) -> bool:
    """Whether the SGLang server at `url` says it is healthy within `timeout`."""
    try:
        request = urllib.request.Request(f"{url}/health", headers=auth(key))
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status == 200
    except (OSError, ValueError):
        return False


def check_alive(url: str, workers: list[Worker], key: str | None = None) -> None:
    """Refuse a gateway that lists a worker which does not answer: the gateway goes on routing requests to it
    until its health check drops it (after three failed checks a minute apart, by default), so problems would
    fail one by one."""
    for each in workers:
        if not answers(each.url, key):
            raise EngineError(
                f"worker {each.url} behind the gateway {url} does not answer: restart it, or remove it with "
                f"curl -X DELETE {url}/workers/{each.id or '<id from GET /workers>'}"
            )


def check_workers(url: str, workers: list[Worker] | None) -> list[Worker]:
    """`workers` as `describe(url)` found them, refused with one line when the gateway cannot serve one A2R role:
    no gateway, no workers, or workers serving different models (their paths would be mixed in one vote).

    >>> check_workers("http://g", [Worker("http://a", "m", 8), Worker("http://b", "m", 8)])[1].url
    'http://b'
    >>> check_workers("http://g", [Worker("http://a", "m", 8), Worker("http://b", "other", 8)])
    Traceback (most recent call last):
    engine.spec.EngineError: worker http://b behind the gateway http://g serves other, not m like http://a; one gateway serves one model
    """
    if workers is None:
        raise EngineError(
            f"{url} is not an smg gateway: it has no GET /workers (an SGLang server is given as is)"
        )
    if not workers:
        raise EngineError(f"the gateway at {url} has no workers: start it with --worker-urls URL [URL ...]")
    first = workers[0]
    for other in workers[1:]:
        if other.model != first.model:
            raise EngineError(
                f"worker {other.url} behind the gateway {url} serves {other.model}, not {first.model} like "
                f"{first.url}; one gateway serves one model"
            )
    return workers
