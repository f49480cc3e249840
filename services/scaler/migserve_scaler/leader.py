"""Leader election between scaler replicas: a lease in the ``migserve_leader`` KV bucket.

Only the replica holding the lease consumes events, runs ticks and executes
effects; the others keep their view current and wait (``app.Scaler``).

The lease
    Key ``subjects.SCALER_LEASE_KEY`` ("scaler") holds a :class:`Lease`: the
    holder (a scaler id; empty once released), when it was acquired and last
    renewed (the holder's wall clock: for people and ``migserve status``
    only, never compared across hosts), its ttl and its term (one more than
    the term before it). Every write is a compare-and-set: ``create`` when
    the key is absent, ``update`` at the revision just read otherwise. Two
    replicas racing for the same lease cannot both win: the server orders
    the writes and refuses the second.

Expiry without trusting other hosts' clocks
    A follower notes the lease's revision and the moment, on its own
    monotonic clock, it first saw that revision. The lease has expired when
    the revision stayed the same for ttl (the larger of the holder's ttl and
    the follower's own); only then does the follower write, at that very
    revision. The holder measures from the moment it *sent* its last
    successful write, which is before the server stored it and so before
    any follower saw it. It renews every ttl/3 and stops acting at
    ttl - margin (margin = ttl/5) after that moment, whether or not it can
    reach NATS to learn more. So a partitioned leader has stopped at least
    ``margin`` before any follower may take over; the margin absorbs clock
    rate differences and scheduling delays. :attr:`Elector.is_leader` reads
    the clock each time it is asked, so a leader whose renewal is stuck in a
    network call still stops on time. A released (holder "") or absent lease
    is taken at once. The bucket's own TTL removes a lease nobody renews;
    lease ttls are capped at that TTL so the key never vanishes while its
    holder may still act.

    A renewal whose reply is lost may still have been stored. The elector
    remembers the bytes of its last unanswered write and recognises them
    when it reads the key again, so that case does not look like a takeover.

Fencing
    A leader paused (GC, SIGSTOP, an overloaded node) between checking
    ``is_leader`` and writing could act after its lease ended. Three things
    bound that: the effect runner checks ``is_leader`` before every effect;
    every plan write is itself a compare-and-set at the revision the
    decision read, so a stale leader's write fails as soon as the new
    leader has touched that plan, and a failed plan write drops the rest of
    its outcome (commands are only sent after their plan write succeeded);
    and commands carry their plan's ids and are deduplicated by command id,
    so a command sent by both the old and the new leader runs once. The
    term therefore does not go into plan writes (the plans' revisions
    already fence exactly those writes); it is kept in the lease, the logs
    and a metric. It restarts at 1 only when no lease record existed for
    the bucket's TTL.

Resuming
    Plans live in KV, not in the leader: a new leader reads them again and
    the core's tick resends the commands of plans in flight (same command
    ids, so agents run each once) or finishes them from the results.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Annotated, Protocol

import msgspec
from migserve_shared import subjects
from migserve_shared.bus import BUCKETS
from nats.errors import Error as NatsError
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from migserve_scaler.metrics import ScalerMetrics

log = logging.getLogger(__name__)

#: the longest lease ttl: the leader bucket's own TTL (a record nobody renews vanishes then)
MAX_TTL_S: float = BUCKETS[subjects.KV_LEADER][1] or 15.0


class Lease(msgspec.Struct, frozen=True, kw_only=True):
    """The value under ``subjects.SCALER_LEASE_KEY``."""

    holder: Annotated[str, msgspec.Meta(max_length=256)]
    acquired: float = 0.0
    renewed: float = 0.0
    ttl_s: Annotated[float, msgspec.Meta(gt=0)]
    term: Annotated[int, msgspec.Meta(ge=0)] = 0


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Lease)


def decode_lease(data: bytes) -> Lease:
    """The lease in ``data``; msgspec.ValidationError or DecodeError if it is not one."""
    return _decoder.decode(data)


class NotLeaderError(Exception):
    """Raised instead of running an effect once this replica is not the leader."""


class LeaseBucket(Protocol):
    """What the elector needs of a KV bucket (``nats.js.kv.KeyValue`` has it)."""

    async def get(self, key: str) -> KeyValue.Entry: ...

    async def create(self, key: str, value: bytes) -> int: ...

    async def update(self, key: str, value: bytes, last: int | None = None) -> int: ...


class Elector:
    """Takes, renews and gives up the scaler lease; says whether this replica leads."""

    def __init__(
        self,
        *,
        bucket: LeaseBucket,
        holder: str,
        ttl_s: float,
        metrics: ScalerMetrics,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if not 0 < ttl_s <= MAX_TTL_S:
            raise ValueError(f"lease ttl {ttl_s!r} s is not in (0, {MAX_TTL_S:g}]")
        self.holder = holder
        self.ttl_s = ttl_s
        self._bucket = bucket
        self._metrics = metrics
        self._clock = clock
        self._wall = wall
        self._renew_s = ttl_s / 3
        self._margin_s = ttl_s / 5
        self._poll_s = min(ttl_s / 5, 1.0)
        self._io_timeout_s = min(ttl_s / 3, 2.0)
        self._lease: Lease | None = None  # ours, while we hold it
        self._revision = 0  # revision of our last successful write (0: we hold nothing)
        self._since = -math.inf  # when that write was sent (monotonic)
        self._pending: tuple[Lease, bytes, float] | None = None  # a write with no answer yet
        self._bad_revision = 0  # the last unreadable lease revision (logged and counted once)
        self._seen: tuple[int, float] | None = None  # another's lease: revision, first seen
        self._term_seen = 0
        self._leading = False  # what was last reported (logs, metrics, waiters)
        self._changed = asyncio.Event()
        #: set once the elector has looked at the lease (it leads or knows who does)
        self.settled = asyncio.Event()

    # State ---------------------------------------------------------------------------------
    @property
    def is_leader(self) -> bool:
        """True while this replica holds the lease and its deadline has not passed."""
        return self._revision > 0 and self._clock() < self._deadline()

    @property
    def term(self) -> int:
        return self._lease.term if self._lease is not None else 0

    @property
    def renewed_at(self) -> float:
        """When (``clock``) the last successful write of the lease was sent."""
        return self._since

    @property
    def deadline(self) -> float:
        """When (``clock``) this replica stops leading unless it renews first."""
        return self._deadline()

    def _deadline(self) -> float:
        return self._since + self.ttl_s - self._margin_s

    def _report(self, change: str = "expired", why: str = "not renewed in time") -> None:
        """Log, count and wake waiters when the role changed (``change``: the
        metric's label when leadership ended: expired, lost or released)."""
        leading = self.is_leader
        if leading == self._leading:
            return
        self._leading = leading
        self._metrics.leader.set(1 if leading else 0)
        self._metrics.leader_term.set(self.term)
        if leading:
            self._metrics.leader_changes.labels("acquired").inc()
            log.info("%s leads now (term %d)", self.holder, self.term)
        else:
            self._metrics.leader_changes.labels(change).inc()
            level = logging.INFO if change == "released" else logging.WARNING
            log.log(level, "%s stopped leading (term %d): %s", self.holder, self.term, why)
        self._changed.set()
        self._changed = asyncio.Event()

    # Waiting -------------------------------------------------------------------------------
    async def wait_leader(self, stop: asyncio.Event) -> bool:
        """Wait until this replica leads; False if ``stop`` was set first."""
        while not self.is_leader:
            if stop.is_set():
                return False
            await _wait_any((self._changed, stop), self._poll_s)
        return True

    async def wait_lost(self, stop: asyncio.Event) -> None:
        """Return as soon as this replica stops leading (at its deadline at the
        latest, even when renewing hangs) or ``stop`` is set."""
        while self.is_leader and not stop.is_set():
            await _wait_any((self._changed, stop), max(self._deadline() - self._clock(), 0.0))

    # The loop ------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Take and renew the lease until ``stop`` is set (``release`` gives it up)."""
        while not stop.is_set():
            self._report()
            try:
                delay = await self._step()
                self.settled.set()
            except (NatsError, TimeoutError) as exc:
                log.warning("lease %s: %r; retrying", subjects.SCALER_LEASE_KEY, exc)
                delay = self._poll_s
            self._report()
            if self.is_leader:  # wake at the deadline to report a missed renewal on time
                delay = min(delay, max(self._deadline() - self._clock(), 0.0) + 0.001)
            await _wait_any((stop,), delay)
        self._report()

    async def _step(self) -> float:
        """One look or renewal; the seconds until the next one."""
        if self._revision and self._pending is None:
            due = self._since + self._renew_s
            now = self._clock()
            if now < due:
                return due - now
            if await self._write(self._renewal(), last=self._revision):
                return self._renew_s
            self._lost()
            return 0.0
        return await self._look()

    async def _look(self) -> float:
        """Read the lease; take it when free, expired, or still ours."""
        lease, revision, raw = await self._read()
        if self._pending is not None:
            mine, data, sent = self._pending
            self._pending = None
            if raw == data:  # our write was stored; only its answer was lost
                self._held(mine, revision, sent)
                return 0.0
        if self._revision and revision == self._revision:
            return 0.0  # nobody wrote since our last write: renew at it
        if self._revision:
            self._lost()
        if lease is not None:
            self._term_seen = max(self._term_seen, lease.term)
        if revision == 0 or (lease is not None and not lease.holder):
            await self._take(revision)
            return 0.0 if self._revision else self._poll_s
        now = self._clock()
        if self._seen is None or self._seen[0] != revision:
            self._seen = (revision, now)
            return self._poll_s
        ttl = max(self.ttl_s, lease.ttl_s if lease is not None else 0.0)
        waited = now - self._seen[1]
        if waited < ttl:
            return min(self._poll_s, ttl - waited)
        holder = lease.holder if lease is not None else "an unreadable lease"
        log.warning("lease of %s not renewed for %.1f s: taking over", holder, waited)
        await self._take(revision)
        return 0.0 if self._revision else self._poll_s

    async def _take(self, revision: int) -> None:
        now = self._wall()
        lease = Lease(
            holder=self.holder,
            acquired=now,
            renewed=now,
            ttl_s=self.ttl_s,
            term=self._term_seen + 1,
        )
        await self._write(lease, last=revision)

    def _renewal(self) -> Lease:
        assert self._lease is not None
        return msgspec.structs.replace(self._lease, renewed=self._wall())

    async def _read(self) -> tuple[Lease | None, int, bytes | None]:
        """The lease, its revision (0: absent) and raw value."""
        try:
            entry = await asyncio.wait_for(
                self._bucket.get(subjects.SCALER_LEASE_KEY), self._io_timeout()
            )
        except KeyNotFoundError:
            return None, 0, None
        raw = entry.value or b""
        try:
            lease = decode_lease(raw)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            if entry.revision != self._bad_revision:
                self._bad_revision = entry.revision or 0
                self._metrics.bad_messages.labels(subjects.KV_LEADER).inc()
                log.warning("unreadable lease at revision %s: %s", entry.revision, exc)
            lease = None
        return lease, entry.revision or 0, raw

    async def _write(self, lease: Lease, *, last: int) -> bool:
        """Compare-and-set ``lease`` at revision ``last`` (0: create); False if refused.

        A timeout or NATS error leaves the write pending (it may have been stored)
        and propagates; the next step reads the key to find out.
        """
        data = _encoder.encode(lease)
        sent = self._clock()
        timeout = self._io_timeout()
        self._pending = (lease, data, sent)
        key = subjects.SCALER_LEASE_KEY
        try:
            if last:
                revision = await asyncio.wait_for(
                    self._bucket.update(key, data, last=last), timeout
                )
            else:
                revision = await asyncio.wait_for(self._bucket.create(key, data), timeout)
        except KeyWrongLastSequenceError:
            self._pending = None
            return False
        self._held(lease, revision, sent)
        return True

    def _io_timeout(self) -> float:
        """How long one NATS call may take: never past the deadline while leading,
        so the loop notices (and reports) a missed renewal on time."""
        if self.is_leader:
            return min(self._io_timeout_s, max(self._deadline() - self._clock(), 0.01))
        return self._io_timeout_s

    def _held(self, lease: Lease, revision: int, sent: float) -> None:
        self._pending = None
        self._lease, self._revision, self._since = lease, revision, sent
        self._term_seen = max(self._term_seen, lease.term)
        self._seen = None

    def _lost(self) -> None:
        self._revision = 0
        self._report("lost", "another replica took the lease")

    # Giving up -----------------------------------------------------------------------------
    async def release(self) -> None:
        """Give the lease up so a follower takes over at once.

        Call it only after this replica stopped acting. A lease that cannot be
        written now simply expires after its ttl.
        """
        if not self._revision or self._lease is None:
            return
        revision = self._revision
        self._revision = 0
        self._report("released", "released the lease")
        released = msgspec.structs.replace(self._lease, holder="", renewed=self._wall())
        try:
            await asyncio.wait_for(
                self._bucket.update(
                    subjects.SCALER_LEASE_KEY, _encoder.encode(released), last=revision
                ),
                self._io_timeout_s,
            )
        except KeyWrongLastSequenceError:
            log.info("lease already taken by another replica")
        except (NatsError, TimeoutError) as exc:
            log.warning("releasing the lease failed (it expires in %g s): %r", self.ttl_s, exc)
        else:
            log.info("%s released the lease (term %d)", self.holder, self.term)


async def _wait_any(events: Sequence[asyncio.Event], within_s: float) -> None:
    """Wait until one of ``events`` is set or ``within_s`` seconds passed."""
    if any(e.is_set() for e in events):
        return
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=within_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
