"""The second `Source`: one gateway of a fleet, fed by the etcd store through a watch.

    start     read everything under P/config/ at one revision (or, if no endpoint answers,
              the local snapshot from the last run: the gateway enforces its last good
              state; with neither, a clear error)
    watch     a thread follows P/config/ from the snapshot's revision + 1; every change is
              applied to the in-memory snapshot, written to <state-dir>/fleet-snapshot.json
              (plain JSON, atomically) and wakes the daemon (`wait`): no polling loop
    failure   the stream ends or the keepalive fails: reconnect with backoff (0.2 s doubling
              to 5 s) and resume from the revision held; a compacted revision means a full
              re-read. Meanwhile the daemon keeps enforcing, repairing and applying stages
              from the snapshot (the schedule is part of the policy in it)
    report    one status key per gateway on a lease (P/status/<gateway>): what it applied,
              its digest, its last pass and last error; a dead gateway's key expires

What the gateway enforces is the published policy narrowed to its own pools
(`Policy.for_gateway`) and the overrides that reach it (its own > its group's > the fleet's).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import ipaddress
import json
import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from op25b_ctl import __version__
from op25b_ctl.errors import (
    Compacted,
    OverrideError,
    PolicyError,
    Problem,
    StateError,
    StoreError,
    StoreUnavailable,
    StoreUsageError,
)
from op25b_ctl.policy.loader import parse_policy
from op25b_ctl.policy.model import Exemption, Policy, check_exemptions
from op25b_ctl.policy.overrides import Override
from op25b_ctl.source import audit
from op25b_ctl.source.base import Snapshot
from op25b_ctl.source.etcd import (
    EtcdStore,
    Event,
    Published,
    Scope,
    StoreSnapshot,
    host_name,
)
from op25b_ctl.source.state import StateDir, write_atomic

log = logging.getLogger("op25b_ctl.fleet")

SNAPSHOT_FILE = "fleet-snapshot.json"
FORMAT = 1
LEASE_TTL = 15  # seconds a gateway's status outlives it
KEEPALIVE_EVERY = 4.0  # seconds between lease keepalives (also the liveness check)
HEARTBEAT_EVERY = 30.0  # a status put at least this often ("last seen")
BACKOFF_FIRST, BACKOFF_MAX = 0.2, 5.0


def gateway_overrides(
    records: Iterable[tuple[Scope, dict[str, Any]]], gateway: str, group: str | None
) -> dict[str, Override]:
    """The overrides that reach this gateway, one per pool: the narrowest scope wins."""
    best: dict[str, tuple[int, Override]] = {}
    for scope, record in records:
        if not scope.reaches(gateway, group):
            continue
        try:
            override = Override.from_json(record)
        except OverrideError as exc:
            log.error("ignoring a malformed fleet override: %s", exc)
            continue
        if override.pool not in best or scope.rank > best[override.pool][0]:
            best[override.pool] = (scope.rank, override)
    return {pool: o for pool, (_, o) in best.items()}


def with_fleet_exemptions(policy: Policy, records: Iterable[dict[str, Any]]) -> Policy:
    """`policy` plus the fleet's exemptions that pass the exemptions.yaml checks against it
    (checked at `exempt add`; one made invalid by a later publish is left out and logged)."""
    accepted = list(policy.exemptions)
    for record in records:
        try:
            exemption = Exemption.model_validate(
                {
                    k: record.get(k)
                    for k in ("prefix", "ticket", "expires", "reason")
                    if record.get(k) is not None
                }
            )
        except ValidationError as exc:
            log.error("ignoring fleet exemption %s: %s", record.get("ticket"), exc)
            continue
        trial = dataclasses.replace(policy, exemptions=(*accepted, exemption))
        trial.__dict__["_pool_index"] = policy._pool_index  # same pools: reuse the index
        findings = check_exemptions(trial)
        if findings:
            log.error("ignoring fleet exemption %s: %s", exemption.ticket, findings[0].message)
            continue
        accepted.append(exemption)
    if len(accepted) == len(policy.exemptions):
        return policy
    merged = dataclasses.replace(policy, exemptions=tuple(accepted))
    merged.__dict__["_pool_index"] = policy._pool_index
    return merged


def save_snapshot(path: Path, snapshot: StoreSnapshot, store_url: str, gateway: str) -> None:
    body = {"format": FORMAT, "store": store_url, "gateway": gateway, **snapshot.to_json()}
    write_atomic(path, json.dumps(body, sort_keys=True, indent=1) + "\n")


def read_snapshot(path: Path) -> StoreSnapshot | None:
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StateError(f"{path}: unreadable fleet snapshot ({exc}); remove it") from None
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise StateError(f"{path}: not an op25b-ctl fleet snapshot (format {FORMAT})")
    try:
        return StoreSnapshot.from_json(body)
    except (KeyError, TypeError, ValueError) as exc:
        raise StateError(f"{path}: malformed fleet snapshot ({exc}); remove it") from None


class FleetSource:
    """Gateway `gateway` of the fleet in `store`, with its snapshot in `state_dir`."""

    def __init__(
        self,
        store: EtcdStore,
        gateway: str,
        state_dir: Path | str,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.gateway = gateway
        self.state = StateDir(state_dir)
        self.snapshot_file = self.state.path / SNAPSHOT_FILE
        self.monotonic = monotonic
        self._cond = threading.Condition()
        self._snap: StoreSnapshot | None = None
        self._parsed: tuple[str, Policy] | None = None  # (published digest, whole policy)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._close_stream: Callable[[], None] | None = None
        self._lease: int | None = None
        self._last_status: dict[str, Any] | None = None
        self._last_put = 0.0
        self._put_lock = threading.Lock()  # status puts from the loop and the two threads
        # what the metrics and the status report read (replaced whole, read without locks)
        self.connected = False
        # the watch is established (etcd confirmed it): every later change reaches the daemon
        self.watching = False
        self.last_sync: float | None = None  # monotonic time the store last confirmed us
        self.resyncs = 0
        self.reconnects = 0
        self.last_store_error: str | None = None
        self.group: str | None = None
        self.loaded: tuple[int, int] | None = None  # (store revision, policy revision) loaded
        self.on_change: Callable[[], None] | None = None  # wakes the daemon's loop

    # ---------------------------------------------------------------- start / stop

    def start(self, *, watch: bool = True) -> None:
        """Load the store's state (or the local snapshot) and start following the store.

        FleetStartError if the gateway is unknown to the published policy, or if neither the
        store nor a local snapshot can be read."""
        try:
            snap = self.store.snapshot()
            self.connected = True
            self.last_sync = self.monotonic()
        except StoreUnavailable as exc:
            self.last_store_error = str(exc)
            local = read_snapshot(self.snapshot_file)
            if local is None:
                raise StoreUnavailable(
                    f"{exc}; and no local snapshot in {self.snapshot_file}: nothing to "
                    "enforce yet (the table, if any, is left as it is)"
                ) from None
            log.warning(
                "store unreachable (%s): enforcing the local snapshot of store revision %d",
                exc,
                local.revision,
            )
            snap = local
        published = snap.published(self.store.keys)
        if published is None:
            raise StoreUsageError(
                f"nothing published in {self.store.config.url}: run `op25b-ctl publish` first"
            )
        self._check_gateway(published)
        with self._cond:
            self._snap = snap
        if self.connected:
            self._save(snap)
        if watch:
            self.follow()

    def follow(self) -> None:
        """Start the watch and status threads (from the revision held now)."""
        self._spawn(self._follow, "fleet-watch")
        self._spawn(self._keepalive, "fleet-status")

    def _check_gateway(self, published: Published) -> None:
        policy = self._whole_policy(published)
        try:
            self.group = policy.fleet_gateway(self.gateway).group
        except KeyError as exc:
            raise StoreUsageError(
                f"--gateway {self.gateway}: {exc.args[0]} (published policy revision "
                f"{published.revision}); refusing to start with an empty table"
            ) from None

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        """Stop following, and revoke the status lease: the key goes with it, so nobody
        reads `ok` from a daemon that no longer applies anything (a killed one's key
        expires with its lease instead)."""
        self._stop.set()
        closer = self._close_stream
        if closer is not None:
            with contextlib.suppress(Exception):
                closer()
        with self._cond:
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=5)
        with self._put_lock:
            lease, self._lease = self._lease, None
            if lease is not None and self.connected:
                try:
                    self.store.revoke(lease)
                except StoreError as exc:
                    log.warning("status key left to expire with its lease: %s", exc)

    # ---------------------------------------------------------------- the Source protocol

    def revision(self) -> Hashable:
        snap = self._snap
        return snap.revision if snap is not None else None

    def digest(self) -> str:
        snap = self._require()
        h = hashlib.sha256()
        for key in sorted(snap.values):
            if key != self.store.keys.changed:
                h.update(key.encode() + b"\0" + snap.values[key] + b"\0")
        return h.hexdigest()

    def wait(self, since: Hashable, timeout: float) -> bool:
        """Block until the watch brought a new revision (True) or `timeout` passed."""
        end = self.monotonic() + timeout
        with self._cond:
            while self.revision() == since and not self._stop.is_set():
                left = end - self.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return self.revision() != since

    def load(self) -> Snapshot:
        snap = self._require()
        keys = self.store.keys
        published = snap.published(keys)
        if published is None:
            raise PolicyError([])
        whole = self._whole_policy(published)
        try:
            gw = whole.fleet_gateway(self.gateway)
        except KeyError as exc:
            raise PolicyError(
                [Problem("gateways.yaml", "", f"{exc.args[0]} (published revision)")]
            ) from None
        whole = with_fleet_exemptions(whole, snap.exemptions(keys))
        policy = whole.for_gateway(self.gateway)
        overrides = gateway_overrides(snap.overrides(keys), self.gateway, gw.group)
        self.group = gw.group
        self.loaded = (snap.revision, published.revision)
        return Snapshot(policy, overrides, snap.revision, published.digest)

    def policy(self) -> Policy:
        return self.load().policy

    def overrides(self) -> dict[str, Override]:
        return dict(self.load().overrides)

    def published(self) -> Published | None:
        snap = self._snap
        return snap.published(self.store.keys) if snap is not None else None

    def set_override(self, override: Override) -> None:
        """A local `pool ...` on a fleet gateway narrows to this gateway's own key."""
        record = {**override.to_json(), "host": host_name(), "scope": f"gateway/{self.gateway}"}
        self.store.set_override(override.pool, Scope("gateway", self.gateway), record, None)

    def clear_override(self, pool: str) -> None:
        self.store.set_override(pool, Scope("gateway", self.gateway), None, None)

    def record(self, entry: audit.Entry) -> None:
        self.store.append_audit({**entry.to_json(), "host": host_name(), "gateway": self.gateway})

    def check_recordable(self) -> None:
        self.store.revision()  # the store answers: an audit entry can be written

    def audit_log(self) -> list[dict[str, Any]]:
        return self.store.audit()

    def audit_skipped(self) -> list[tuple[int, str]]:
        return []  # entries are whole keys: none is half written

    @property
    def audit_location(self) -> str:
        return f"{self.store.config.url} ({self.store.keys.audit})"

    def lock(self, what: str, timeout: float) -> AbstractContextManager[None]:
        return self.state.lock(what, timeout=timeout)

    def try_lock(self, what: str) -> AbstractContextManager[None]:
        if not self.state.path.is_dir():
            return contextlib.nullcontext()
        return self.state.lock(what, timeout=0)

    # ---------------------------------------------------------------- internals

    def _require(self) -> StoreSnapshot:
        snap = self._snap
        if snap is None:
            raise StateError("fleet source not started")
        return snap

    def _whole_policy(self, published: Published) -> Policy:
        cached = self._parsed
        if cached is not None and cached[0] == published.digest:
            return cached[1]
        policy = parse_policy(published.files, origin=f"published policy r{published.revision}")
        self._parsed = (published.digest, policy)
        return policy

    def _save(self, snap: StoreSnapshot) -> None:
        try:
            save_snapshot(self.snapshot_file, snap, self.store.config.url, self.gateway)
        except (OSError, StateError) as exc:
            log.error("cannot write the local snapshot %s: %s", self.snapshot_file, exc)

    def _install(self, snap: StoreSnapshot) -> None:
        """A new state from the store: keep it on disk first, then wake the daemon."""
        self._save(snap)
        with self._cond:
            self._snap = snap
            self._cond.notify_all()
        if self.on_change is not None:
            self.on_change()

    def _apply(self, events: list[Event]) -> None:
        snap = self._require()
        values = dict(snap.values)
        revision = snap.revision
        for event in events:
            if event.value is None:
                values.pop(event.key, None)
            else:
                values[event.key] = event.value
            revision = max(revision, event.mod_revision)
        self._install(StoreSnapshot(revision, values))

    def _follow(self) -> None:
        """The watch thread: follow, reconnect with backoff, resync after compaction."""
        delay = BACKOFF_FIRST
        while not self._stop.is_set():
            start_from = self._require().revision + 1
            try:
                for batch in self.store.watch(
                    start_from, on_open=self._opened, on_created=self._watch_created
                ):
                    if not self.connected:
                        log.info("store reachable again: watching from revision %d", start_from)
                    self.connected = True
                    self.last_sync = self.monotonic()
                    self.last_store_error = None
                    delay = BACKOFF_FIRST
                    if batch:
                        self._apply(batch)
                    if self._stop.is_set():
                        break
            except Compacted as exc:
                log.warning(
                    "store history compacted past revision %d (%s): re-reading everything",
                    start_from,
                    exc,
                )
                try:
                    self._install(self.store.snapshot())
                    self.resyncs += 1
                    self.last_sync = self.monotonic()
                    continue
                except StoreError as again:
                    self._lost(again)
            except (StoreError, OSError) as exc:
                self._lost(exc)
            finally:
                self._close_stream = None
                self.watching = False
            if self._stop.wait(delay):
                break
            delay = min(delay * 2, BACKOFF_MAX)
            self.reconnects += 1

    def _opened(self, closer: Callable[[], None]) -> None:
        self._close_stream = closer
        if not self.connected:
            log.info("store reachable again: watch open")
        self.connected = True
        self.last_sync = self.monotonic()

    def _watch_created(self) -> None:
        """etcd confirmed the watch: the status may say so (`watching`), put it again."""
        self.watching = True
        log.info("following the store's changes from revision %d", self.revision() or 0)
        self._put_status()

    def _lost(self, exc: BaseException) -> None:
        if self._stop.is_set():
            return  # our own stop() closed the stream
        if self.connected:
            log.warning(
                "store lost (%s): enforcing the local snapshot of revision %s; reconnecting",
                exc,
                self.revision(),
            )
        self.connected = False
        self.watching = False
        self.last_store_error = str(exc)
        self._lease = None

    # ---------------------------------------------------------------- status reporting

    def report(self, status: Mapping[str, Any]) -> None:
        """The daemon's view after a pass; put on the lease if it changed (or as a heartbeat).
        Called from the daemon loop; the keepalive thread puts it again after a reconnect."""
        full = {
            "gateway": self.gateway,
            "host": host_name(),
            "version": __version__,
            **status,
        }
        with self._cond:
            changed = _without_time(full) != _without_time(self._last_status or {})
            self._last_status = full
        if changed:
            self._put_status()

    def _put_status(self) -> None:
        """Put the last status (one put at a time: `watching` read and written together)."""
        with self._put_lock:
            status = self._last_status
            if status is None or not self.connected:
                return
            try:
                if self._lease is None:
                    self._lease = self.store.grant(LEASE_TTL)
                body = {
                    **status,
                    "connected": True,
                    "watching": self.watching,
                    "reported_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
                }
                self.store.put_status(self.gateway, body, self._lease)
                self._last_put = self.monotonic()
            except StoreError as exc:
                self._broken(exc)

    def _keepalive(self) -> None:
        """The status thread: keep the lease alive, heartbeat the status, and notice a dead
        store while the watch stream is silent (then close it so the watch reconnects)."""
        while not self._stop.wait(KEEPALIVE_EVERY):
            if not self.connected:
                continue  # the watch thread is reconnecting; it re-opens the lease path
            try:
                if self._lease is not None and self.store.keepalive(self._lease) <= 0:
                    self._lease = None  # expired (a long pause): grant a new one
                if self._lease is None or self.monotonic() - self._last_put >= HEARTBEAT_EVERY:
                    self._put_status()
                else:
                    self.last_sync = self.monotonic()
            except StoreError as exc:
                self._broken(exc)

    def _broken(self, exc: BaseException) -> None:
        self._lost(exc)
        closer = self._close_stream
        if closer is not None:
            with contextlib.suppress(Exception):
                closer()


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _without_time(status: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in status.items() if k not in ("reported_at", "last_pass")}


def open_source(
    store_url: str,
    gateway: str,
    state_dir: Path | str,
    *,
    cacert: str | None = None,
    cert: str | None = None,
    key: str | None = None,
) -> FleetSource:
    from op25b_ctl.source.etcd import parse_store_url

    if not gateway:
        raise StoreUsageError("--store needs --gateway NAME (this gateway's name in gateways.yaml)")
    config = parse_store_url(store_url, cacert=cacert, cert=cert, key=key)
    for host, _ in config.endpoints:
        if not _is_address(host):
            log.warning(
                "store endpoint %s is a name: every connection asks the resolver first (an "
                "unreachable one delays it by its timeout); give its address",
                host,
            )
    return FleetSource(EtcdStore(config), gateway, state_dir)


__all__ = ["FleetSource", "Snapshot", "gateway_overrides", "open_source"]
