"""(I/O) The fleet store on etcd v3: published policy, fleet overrides, audit, gateway status.

Key layout under the store's prefix P (`etcd://HOST:PORT[,HOST:PORT]/P`):

    P/config/policy                        the published policy: revision number, digest,
                                           who/when/why, and every policy file's text
    P/config/overrides/<pool>/all          a fleet-wide `pool rollback|enforce|monitor`
    P/config/overrides/<pool>/group/<g>    ... narrowed to one group of gateways
    P/config/overrides/<pool>/gateway/<n>  ... narrowed to one gateway
    P/audit/<utc-time>-<random>            one audit entry per change, written in the same
                                           transaction as the change itself
    P/status/<gateway>                     what each gateway has applied, on a lease: a dead
                                           gateway's key expires

Gateways watch `P/config/` only, so audit entries and other gateways' status reports never
wake them. A publish is one transaction guarded by the etcd mod revision of `P/config/policy`
it was based on, so two publishers racing cannot overwrite each other silently.

The client is `etcd3gw` (etcd's HTTP/JSON gateway; no protobuf), an optional extra
(`op25b-ctl[etcd]`), imported only when a store is used. Its watch helper drops etcd's
cancel-on-compaction notice, so the watch stream is read here, on the client's session.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from op25b_ctl.errors import (
    Compacted,
    ConcurrentPublish,
    StoreError,
    StoreUnavailable,
    StoreUsageError,
)

if TYPE_CHECKING:
    import requests
    from etcd3gw.client import Etcd3Client

DEFAULT_PORT = 2379
DEFAULT_TIMEOUT = 5.0
ScopeKind = Literal["all", "group", "gateway"]


# ---------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class StoreConfig:
    """Where the store is and how to talk to it (TLS flags named as etcdctl names them)."""

    endpoints: tuple[tuple[str, int], ...]
    prefix: str
    tls: bool = False
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None

    @property
    def url(self) -> str:
        hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.endpoints)
        return f"{'etcds' if self.tls else 'etcd'}://{hosts}{self.prefix}"


def parse_store_url(
    url: str, *, cacert: str | None = None, cert: str | None = None, key: str | None = None
) -> StoreConfig:
    """`etcd://HOST:PORT[,HOST:PORT...]/PREFIX` -> StoreConfig; `etcds://` or any TLS file
    switches to HTTPS. Everything wrong is said at once, before anything is contacted."""
    text = url.strip()
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in ("etcd", "etcds"):
        raise StoreUsageError(
            f"store {url!r}: expected etcd://HOST:PORT[,HOST:PORT...]/PREFIX (or etcds:// for TLS)"
        )
    netloc, slash, path = rest.partition("/")
    path = slash + path
    if any(c in rest for c in "?#@"):
        raise StoreUsageError(f"store {url!r}: no user, query or fragment allowed")
    endpoints: list[tuple[str, int]] = []
    for item in netloc.split(","):
        item = item.strip()
        if not item:
            raise StoreUsageError(f"store {url!r}: empty endpoint")
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            port_text = rest.removeprefix(":") if rest else ""
        else:
            host, _, port_text = item.partition(":")
        if not host:
            raise StoreUsageError(f"store {url!r}: endpoint {item!r} has no host")
        if port_text and not (port_text.isdigit() and 0 < int(port_text) < 65536):
            raise StoreUsageError(f"store {url!r}: endpoint {item!r} has no valid port")
        endpoints.append((host, int(port_text) if port_text else DEFAULT_PORT))
    prefix = path.rstrip("/")
    if not prefix or "//" in prefix or any(c in prefix for c in " \t\n\\"):
        raise StoreUsageError(
            f"store {url!r}: give a key prefix such as /op25b (one fleet per prefix)"
        )
    if (cert is None) != (key is None):
        raise StoreUsageError("--cert and --key go together (the client certificate and its key)")
    for what, file in (("--cacert", cacert), ("--cert", cert), ("--key", key)):
        if file is not None and not os.path.isfile(file):
            raise StoreUsageError(f"{what} {file}: no such file")
    tls = scheme == "etcds" or any(p is not None for p in (cacert, cert, key))
    return StoreConfig(tuple(endpoints), prefix, tls, cacert, cert, key)


# ---------------------------------------------------------------------------- key layout


class Keys:
    """The key layout, in one place (pure)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix.rstrip("/")

    @property
    def config(self) -> str:
        return f"{self.prefix}/config/"

    @property
    def policy(self) -> str:
        return f"{self.prefix}/config/policy"

    @property
    def changed(self) -> str:
        """Rewritten by every config change: its mod revision is the config's revision (an
        override's delete leaves no key whose revision could say it happened)."""
        return f"{self.prefix}/config/changed"

    @property
    def overrides(self) -> str:
        return f"{self.prefix}/config/overrides/"

    @property
    def exemptions(self) -> str:
        return f"{self.prefix}/config/exemptions/"

    def exemption(self, ticket: str) -> str:
        return f"{self.exemptions}{ticket}"

    def override(self, pool: str, scope: Scope) -> str:
        return f"{self.overrides}{pool}/{scope.key}"

    @property
    def audit(self) -> str:
        return f"{self.prefix}/audit/"

    def audit_entry(self, at: datetime) -> str:
        stamp = at.astimezone(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        return f"{self.audit}{stamp}-{secrets.token_hex(3)}"

    @property
    def status(self) -> str:
        return f"{self.prefix}/status/"

    def gateway_status(self, gateway: str) -> str:
        return f"{self.status}{gateway}"


@dataclass(frozen=True)
class Scope:
    """Which gateways a fleet override reaches: all, one group, or one gateway."""

    kind: ScopeKind = "all"
    name: str = ""

    @property
    def key(self) -> str:
        return "all" if self.kind == "all" else f"{self.kind}/{self.name}"

    def __str__(self) -> str:
        return "every gateway" if self.kind == "all" else f"{self.kind} {self.name}"

    @classmethod
    def from_key(cls, text: str) -> Scope | None:
        if text == "all":
            return cls()
        kind, _, name = text.partition("/")
        if kind in ("group", "gateway") and name and "/" not in name:
            return cls(kind, name)  # type: ignore[arg-type]
        return None

    def reaches(self, gateway: str, group: str | None) -> bool:
        return (
            self.kind == "all"
            or (self.kind == "group" and self.name == group)
            or (self.kind == "gateway" and self.name == gateway)
        )

    @property
    def rank(self) -> int:
        """The narrower scope wins: a gateway's own override outranks its group's."""
        return {"all": 0, "group": 1, "gateway": 2}[self.kind]


# ---------------------------------------------------------------------------- values


@dataclass(frozen=True)
class Published:
    """The policy as published: its files' text, numbered, with who/when/why."""

    revision: int  # the policy revision: 1, 2, 3 ... one per publish
    digest: str
    files: dict[str, str]
    meta: dict[str, Any] = field(default_factory=dict)
    mod_revision: int = 0  # etcd's revision of the key (what a publish is guarded by)

    def to_json(self) -> dict[str, Any]:
        return {"revision": self.revision, "digest": self.digest, "files": self.files, **self.meta}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], mod_revision: int = 0) -> Published:
        try:
            files = data["files"]
            if not isinstance(files, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in files.items()
            ):
                raise ValueError("files must map names to text")
            meta = {k: v for k, v in data.items() if k not in ("revision", "digest", "files")}
            return cls(int(data["revision"]), str(data["digest"]), dict(files), meta, mod_revision)
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"published policy record is malformed: {exc}") from None


def files_digest(files: Mapping[str, str]) -> str:
    """sha256 over the files' names and texts, as loader.policy_digest hashes a directory."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + files[name].encode() + b"\0")
    return h.hexdigest()


@dataclass(frozen=True)
class StoreSnapshot:
    """Everything under P/config/ at one etcd revision: what a gateway needs to enforce."""

    revision: int  # etcd revision the snapshot is consistent at
    values: dict[str, bytes]  # key -> value, keys under P/config/

    def published(self, keys: Keys) -> Published | None:
        raw = self.values.get(keys.policy)
        if raw is None:
            return None
        return Published.from_json(_loads(raw, keys.policy))

    def overrides(self, keys: Keys) -> list[tuple[Scope, dict[str, Any]]]:
        """(scope, override record) for every well-formed override key."""
        out: list[tuple[Scope, dict[str, Any]]] = []
        for key, raw in sorted(self.values.items()):
            if not key.startswith(keys.overrides):
                continue
            pool, _, rest = key[len(keys.overrides) :].partition("/")
            scope = Scope.from_key(rest)
            if scope is None or not pool:
                continue
            record = _loads(raw, key)
            out.append((scope, {**record, "pool": pool}))
        return out

    def exemptions(self, keys: Keys) -> list[dict[str, Any]]:
        """Fleet exemption records (P/config/exemptions/<ticket>), by ticket."""
        return [
            {**_loads(raw, key), "ticket": key[len(keys.exemptions) :]}
            for key, raw in sorted(self.values.items())
            if key.startswith(keys.exemptions)
        ]

    def to_json(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "values": {k: v.decode("utf-8", "replace") for k, v in sorted(self.values.items())},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StoreSnapshot:
        values = data.get("values")
        if not isinstance(values, dict):
            raise ValueError("snapshot has no values")
        return cls(int(data["revision"]), {str(k): str(v).encode() for k, v in values.items()})


@dataclass(frozen=True)
class Event:
    """One change under the watched prefix: a put (value) or a delete (value None)."""

    key: str
    value: bytes | None
    mod_revision: int


def _loads(raw: bytes, key: str) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StoreError(f"{key}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise StoreError(f"{key}: expected a JSON object")
    return data


def _b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def _unb64(data: str) -> bytes:
    return base64.b64decode(data)


def _range_end(prefix: str) -> str:
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return bytes(raw).decode()


def dumps(data: Mapping[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, ensure_ascii=False).encode()


def host_name() -> str:
    return socket.gethostname()


# ---------------------------------------------------------------------------- the store


class EtcdStore:
    """One fleet's keys on an etcd cluster, through its HTTP/JSON gateway (etcd3gw).

    Requests go to the first endpoint that answers; the one that did is tried first next
    time. Every method raises StoreUnavailable when no endpoint answers.
    """

    def __init__(self, config: StoreConfig, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        try:
            from etcd3gw.client import Etcd3Client
        except ImportError:
            raise StoreUsageError(
                "the etcd store needs the etcd3gw client: pip install 'op25b-ctl[etcd]'"
            ) from None
        self.config = config
        self.keys = Keys(config.prefix)
        self.timeout = timeout
        self._clients: list[Etcd3Client] = [
            Etcd3Client(
                host=host,
                port=port,
                protocol="https" if config.tls else "http",
                ca_cert=config.cacert,
                cert_cert=config.cert,
                cert_key=config.key,
                timeout=timeout,
                api_path="/v3/",  # etcd >= 3.4; saves a /version round trip per client
            )
            for host, port in config.endpoints
        ]
        self._current = 0
        # Per request: requests lets $REQUESTS_CA_BUNDLE override a session's CA bundle,
        # and --cacert must win over the environment.
        self._verify: str | bool = config.cacert if config.cacert else True

    def close(self) -> None:
        for client in self._clients:
            client.session.close()

    # -- transport

    def _post(self, path: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        from etcd3gw import exceptions

        errors: list[str] = []
        n = len(self._clients)
        for i in range(n):
            index = (self._current + i) % n
            client = self._clients[index]
            try:
                result = client.post(client.get_url(path), json=payload, verify=self._verify)
            except (exceptions.ConnectionFailedError, exceptions.ConnectionTimeoutError) as exc:
                errors.append(f"{client.host}:{client.port}: {_short(exc)}")
                continue
            except exceptions.Etcd3Exception as exc:
                raise StoreError(f"etcd refused {path}: {exc.detail_text or exc}") from None
            except OSError as exc:  # TLS set-up problems surface as OSError subclasses
                errors.append(f"{client.host}:{client.port}: {exc}")
                continue
            self._current = index
            if not isinstance(result, dict):
                raise StoreError(f"etcd answered {path} with {type(result).__name__}")
            return result
        raise StoreUnavailable(f"etcd store {self.config.url} unreachable: {'; '.join(errors)}")

    def _range(
        self, key: str, *, prefix: bool = False, revision: int | None = None
    ) -> tuple[int, list[tuple[str, bytes, int]]]:
        payload: dict[str, Any] = {"key": _b64(key)}
        if prefix:
            payload["range_end"] = _b64(_range_end(key))
        if revision is not None:
            payload["revision"] = revision
        result = self._post("kv/range", payload)
        header_rev = int(result.get("header", {}).get("revision", 0))
        kvs = [
            (_unb64(kv["key"]).decode(), _unb64(kv.get("value", "")), int(kv["mod_revision"]))
            for kv in result.get("kvs", [])
        ]
        return header_rev, kvs

    def _txn(
        self,
        compare: Sequence[Mapping[str, Any]],
        success: Sequence[Mapping[str, Any]],
    ) -> tuple[bool, int]:
        result = self._post(
            "kv/txn", {"compare": list(compare), "success": list(success), "failure": []}
        )
        return bool(result.get("succeeded", False)), int(
            result.get("header", {}).get("revision", 0)
        )

    @staticmethod
    def _put(key: str, value: bytes, lease: int | None = None) -> dict[str, Any]:
        put: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease is not None:
            put["lease"] = lease
        return {"request_put": put}

    @staticmethod
    def _delete(key: str) -> dict[str, Any]:
        return {"request_delete_range": {"key": _b64(key)}}

    # -- reads

    def revision(self) -> int:
        """The cluster's current revision (also a cheap liveness probe)."""
        rev, _ = self._range(self.keys.policy)
        return rev

    def published(self) -> Published | None:
        _, kvs = self._range(self.keys.policy)
        if not kvs:
            return None
        _, raw, mod = kvs[0]
        return Published.from_json(_loads(raw, self.keys.policy), mod)

    def snapshot(self) -> StoreSnapshot:
        """Every key under P/config/ at one revision (one range request, so consistent)."""
        rev, kvs = self._range(self.keys.config, prefix=True)
        return StoreSnapshot(rev, {k: v for k, v, _ in kvs})

    def config_revision(self) -> int:
        """The store revision of the latest publish or override change (0: none yet)."""
        _, kvs = self._range(self.keys.changed)
        return kvs[0][2] if kvs else 0

    def audit(self, limit: int = 0) -> list[dict[str, Any]]:
        """Audit entries oldest first (keys sort by time); `limit` keeps the newest N."""
        _, kvs = self._range(self.keys.audit, prefix=True)
        out = [_loads(v, k) for k, v, _ in kvs]
        return out[-limit:] if limit else out

    def statuses(self) -> dict[str, dict[str, Any]]:
        """Gateway -> its last status report (only gateways whose lease is alive)."""
        _, kvs = self._range(self.keys.status, prefix=True)
        return {k[len(self.keys.status) :]: _loads(v, k) for k, v, _ in kvs}

    # -- writes

    def publish(
        self,
        files: Mapping[str, str],
        audit_entry: Mapping[str, Any],
        *,
        base: Published | None,
        meta: Mapping[str, Any],
        now: datetime,
    ) -> Published:
        """Write the policy as revision base+1 in one transaction with its audit entry, if
        P/config/policy is still at `base`'s etcd revision; else ConcurrentPublish."""
        number = (base.revision if base else 0) + 1
        new = Published(number, files_digest(files), dict(files), dict(meta))
        guard: dict[str, Any] = {"key": _b64(self.keys.policy), "result": "EQUAL"}
        if base is None:
            guard.update(target="CREATE", create_revision=0)
        else:
            guard.update(target="MOD", mod_revision=base.mod_revision)
        entry = {**audit_entry, "policy_revision": number, "digest": new.digest}
        ok, rev = self._txn(
            [guard],
            [
                self._put(self.keys.policy, dumps(new.to_json())),
                self._put(self.keys.changed, dumps({"what": "publish", "at": now.isoformat()})),
                self._put(self.keys.audit_entry(now), dumps(entry)),
            ],
        )
        if not ok:
            current = self.published()
            who = ""
            if current is not None:
                by = current.meta.get("published_by", {})
                who = (
                    f" (revision {current.revision}, by {by.get('user', '?')}@"
                    f"{by.get('host', '?')} at {by.get('at', '?')})"
                )
            raise ConcurrentPublish(
                f"the store's policy changed since revision "
                f"{base.revision if base else 'none'} this publish was based on{who}; "
                "nothing written. Review the difference and publish again."
            )
        return Published(new.revision, new.digest, new.files, new.meta, rev)

    def set_override(
        self,
        pool: str,
        scope: Scope,
        record: Mapping[str, Any] | None,
        audit_entry: Mapping[str, Any] | None,
        now: datetime | None = None,
    ) -> int:
        """Put (record) or delete (None) one override key, with its audit entry, atomically.

        Returns the etcd revision of the change (what gateways report having applied)."""
        key = self.keys.override(pool, scope)
        op = self._put(key, dumps(record)) if record is not None else self._delete(key)
        now = now or datetime.now(UTC)
        marker = {"what": f"override {pool}/{scope.key}", "at": now.isoformat()}
        ops = [op, self._put(self.keys.changed, dumps(marker))]
        if audit_entry is not None:
            ops.append(self._put(self.keys.audit_entry(now), dumps(audit_entry)))
        _, rev = self._txn([], ops)
        return rev

    def set_exemption(
        self,
        ticket: str,
        record: Mapping[str, Any] | None,
        audit_entry: Mapping[str, Any] | None,
        now: datetime | None = None,
    ) -> int:
        """Put (record) or delete (None) one fleet exemption key with its audit entry."""
        now = now or datetime.now(UTC)
        key = self.keys.exemption(ticket)
        op = self._put(key, dumps(record)) if record is not None else self._delete(key)
        ops = [
            op,
            self._put(
                self.keys.changed, dumps({"what": f"exemption {ticket}", "at": now.isoformat()})
            ),
        ]
        if audit_entry is not None:
            ops.append(self._put(self.keys.audit_entry(now), dumps(audit_entry)))
        _, rev = self._txn([], ops)
        return rev

    def append_audit(self, entry: Mapping[str, Any]) -> None:
        """One audit entry on its own (changes made elsewhere, e.g. a gateway's own pass)."""
        self._post(
            "kv/put",
            {"key": _b64(self.keys.audit_entry(datetime.now(UTC))), "value": _b64(dumps(entry))},
        )

    def compact(self, revision: int) -> None:
        """Compact history up to `revision` (tests and operators' maintenance)."""
        self._post("kv/compaction", {"revision": revision, "physical": True})

    # -- leases and status

    def grant(self, ttl: int) -> int:
        result = self._post("lease/grant", {"TTL": ttl, "ID": 0})
        return int(result["ID"])

    def keepalive(self, lease: int) -> int:
        """Refresh a lease; returns its TTL, or -1 if it has expired (grant a new one)."""
        result = self._post("lease/keepalive", {"ID": lease})
        return int(result.get("result", {}).get("TTL", -1))

    def revoke(self, lease: int) -> None:
        self._post("kv/lease/revoke", {"ID": lease})

    def put_status(self, gateway: str, status: Mapping[str, Any], lease: int) -> None:
        self._post(
            "kv/put",
            {
                "key": _b64(self.keys.gateway_status(gateway)),
                "value": _b64(dumps(status)),
                "lease": lease,
            },
        )

    # -- watch

    def watch(
        self,
        start_revision: int,
        *,
        on_open: Callable[[Callable[[], None]], None] | None = None,
        on_created: Callable[[], None] | None = None,
    ) -> Iterator[list[Event]]:
        """Batches of changes under P/config/ from `start_revision` on, until the stream ends
        (StoreUnavailable) or the revision was compacted (Compacted).

        `on_open` receives a function that closes the stream from another thread (used when
        the keepalive finds the store gone while the stream is silent). `on_created` is
        called when etcd confirms the watch exists: from then on no change is missed.
        """
        payload = {
            "create_request": {
                "key": _b64(self.keys.config),
                "range_end": _b64(_range_end(self.keys.config)),
                "start_revision": start_revision,
                "progress_notify": True,
            }
        }
        response = self._open_stream("watch", payload)
        if on_open is not None:
            on_open(lambda: _interrupt(response))
        try:
            yield from _watch_batches(response, self.config.url, on_created)
        finally:
            response.close()

    def _open_stream(self, path: str, payload: Mapping[str, Any]) -> requests.Response:
        import requests

        errors: list[str] = []
        n = len(self._clients)
        for i in range(n):
            index = (self._current + i) % n
            client = self._clients[index]
            try:
                response = client.session.post(
                    client.get_url(path),
                    json=payload,
                    stream=True,
                    timeout=(self.timeout, None),
                    verify=self._verify,
                )
            except (requests.RequestException, OSError) as exc:
                errors.append(f"{client.host}:{client.port}: {_short(exc)}")
                continue
            if response.status_code != 200:
                response.close()
                errors.append(f"{client.host}:{client.port}: HTTP {response.status_code}")
                continue
            self._current = index
            return response
        raise StoreUnavailable(f"etcd store {self.config.url} unreachable: {'; '.join(errors)}")


def _watch_batches(
    response: requests.Response, url: str, on_created: Callable[[], None] | None = None
) -> Iterator[list[Event]]:
    """Parse etcd's gateway watch stream: one JSON object per line."""
    import requests

    try:
        for line in _lines(response):
            try:
                chunk = json.loads(line)
            except json.JSONDecodeError:
                raise StoreError(
                    f"etcd watch sent something that is not JSON: {line[:80]!r}"
                ) from None
            if "error" in chunk:
                raise StoreError(f"etcd watch failed: {chunk['error']}")
            result = chunk.get("result", {})
            if result.get("compact_revision") and result.get("canceled"):
                raise Compacted(int(result["compact_revision"]))
            if result.get("canceled"):
                raise StoreUnavailable(
                    f"etcd cancelled the watch: {result.get('cancel_reason', '?')}"
                )
            events = [
                Event(
                    _unb64(ev["kv"]["key"]).decode(),
                    None if ev.get("type") == "DELETE" else _unb64(ev["kv"].get("value", "")),
                    int(ev["kv"]["mod_revision"]),
                )
                for ev in result.get("events", [])
            ]
            header_rev = int(result.get("header", {}).get("revision", 0))
            if result.get("created") and on_created is not None:
                on_created()
            if events:
                yield events
            elif header_rev and not result.get("created"):
                yield []  # a progress notification: the store is alive
    except (requests.RequestException, OSError, AttributeError, ValueError) as exc:
        # AttributeError/ValueError: the stream closed by another thread mid-read
        raise StoreUnavailable(f"etcd watch on {url} broke: {_short(exc)}") from None
    raise StoreUnavailable(f"etcd watch on {url} ended (store restarting or gone)")


def _interrupt(response: requests.Response) -> None:
    """Make a read blocked on `response` in another thread return: shut the socket down
    (closing the response from here would wait for the reader's lock instead)."""
    try:
        fd = response.raw._fp.fileno()  # type: ignore[union-attr]  # http.client's socket
        with socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM) as dup:
            dup.shutdown(socket.SHUT_RDWR)
    except (AttributeError, OSError, ValueError):
        pass  # already closed


def _lines(response: requests.Response) -> Iterator[bytes]:
    """Whole lines of a streamed body as they arrive (chunk_size=None: whatever the socket
    has, never waiting for a fixed amount)."""
    buffer = b""
    for chunk in response.iter_content(chunk_size=None):
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield line
    if buffer.strip():
        yield buffer


def _short(exc: BaseException) -> str:
    text = str(exc) or str(getattr(exc, "detail_text", "") or "") or type(exc).__name__
    if "Max retries exceeded" in text or "Connection refused" in text:
        return "connection refused" if "refused" in text else "connection failed"
    return text[:160]
