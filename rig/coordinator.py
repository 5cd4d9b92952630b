"""Devices as labgrid places: one laptop, several controllers, one holder at a time.

The local device lock (rig.dut.DeviceLock, an ``flock``) only excludes runs on one controller. A
lab whose laptops are shared by several controllers (benches, CI runners, people) already runs
labgrid's coordinator for exactly this; a device with ``[lab] place = "..."`` is acquired there too,
after the local lock, and released before it (:class:`PlaceLease`, called from ``Dut.open/close``).

What the coordinator gives and what it does not (seen with labgrid 26, see the README):

* Acquire is atomic and refuses a second holder ("already acquired"); a reservation queues a
  waiter (``[lab] place_wait``). The holder's name is *self-declared* (``host/user``, from
  ``LG_HOSTNAME``/``LG_USERNAME`` or the machine), so the rig also writes who holds it into the
  place's comment: ``rig: run R, pid P@HOST, since T``. A refusal names both.
* A SIGKILLed holder's acquisition stays. The next run that finds a comment naming a pid of *this*
  host that no longer exists releases it (the holder cannot); one naming another host is only
  reported, with its age: this controller cannot know whether that process lives.
* A coordinator that restarts drops every acquisition, and one that is unreachable cannot tell who
  holds what: both are a :class:`rig.errors.LabFault` (never a verdict on the device); a test running
  while the place was lost is a lab fault, and the next test re-acquires first (:meth:`PlaceLease.ensure`).

labgrid's client is asyncio; the rig is threads. One process has one session per coordinator
(:func:`session_for`), on its own event-loop thread; calls are handed to it and waited for with a
deadline. With xdist, each worker is one process, hence one session.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from rig.errors import ConfigError, LabFault, RigError
from rig.inventory import Device

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The comment the rig writes on a place it holds (parsed back by :func:`parse_holder`).
COMMENT_RE = re.compile(r"^rig: run (?P<run>\S+), pid (?P<pid>\d+)@(?P<host>\S+), since (?P<since>\S+)$")
DEFAULT_PORT = 20408


@dataclass(frozen=True)
class Holder:
    """Who holds a place, from the rig's comment on it."""

    run_id: str
    pid: int
    host: str
    since: float

    def text(self, now: float | None = None) -> str:
        age = (now if now is not None else time.time()) - self.since
        return f"run {self.run_id}, pid {self.pid}@{self.host}, for {_age(age)}"


def _age(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    return f"{s // 3600} h {s % 3600 // 60} min"


def holder_comment(run_id: str, pid: int, host: str, since: float) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since))
    return f"rig: run {run_id}, pid {pid}@{host}, since {stamp}"


def parse_holder(comment: str) -> Holder | None:
    """The rig's holder comment, or None for any other comment (a person's note stays theirs)."""
    m = COMMENT_RE.match(comment.strip())
    if m is None:
        return None
    try:
        since = time.mktime(time.strptime(m["since"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    except ValueError:
        return None
    return Holder(m["run"], int(m["pid"]), m["host"], since)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_here(holder: Holder | None, host: str) -> bool:
    """A holder that named a process of this host that is gone: its acquisition may be cleared."""
    return holder is not None and holder.host == host and not pid_alive(holder.pid)


def coordinator_address(device: Device) -> str:
    addr = device.lab.coordinator or os.environ.get("LG_COORDINATOR")
    if not addr:
        raise ConfigError(
            f"device {device.name}: [lab] place = {device.lab.place!r} but no coordinator: set [lab] coordinator = "
            f'"HOST:PORT" in {device.source_file or "its inventory file"} or the environment variable LG_COORDINATOR'
        )
    return addr if ":" in addr.rsplit("]", 1)[-1] else f"{addr}:{DEFAULT_PORT}"


# ---------------------------------------------------------------------------------------------
# one labgrid client session per process and coordinator, on its own event loop


class Session:
    """A labgrid ``ClientSession`` driven from threads. ``identity`` is labgrid's ``host/user``."""

    def __init__(self, address: str, timeout: float) -> None:
        from labgrid.remote.client import ClientSession

        self.address = address
        self.timeout = timeout
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=f"labgrid-{address}", daemon=True)
        self._thread.start()

        async def start() -> Any:
            s = ClientSession(address, self.loop)
            await s.start()
            return s

        try:
            self.client = self._run(start(), "connect")
        except BaseException:
            self._stop_loop()
            raise
        self.identity = f"{self.client.gethostname()}/{self.client.getuser()}"

    @property
    def alive(self) -> bool:
        return not self.client.stopping.is_set()

    def _run(self, coro: Awaitable[T], what: str, timeout: float | None = None) -> T:
        import grpc
        from labgrid.remote.client import Error as LabgridError

        fut = asyncio.run_coroutine_threadsafe(asyncio.wait_for(coro, timeout or self.timeout), self.loop)  # type: ignore[arg-type]
        try:
            return fut.result()
        except TimeoutError:
            raise LabFault(
                f"labgrid coordinator {self.address}: no answer to {what} within {timeout or self.timeout:g} s",
                component="coordinator",
            ) from None
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.PERMISSION_DENIED):
                raise Refused(str(exc.details())) from None
            if exc.code() is grpc.StatusCode.INVALID_ARGUMENT:
                raise LabFault(
                    f"labgrid coordinator {self.address}: {exc.details()}", component="coordinator"
                ) from None
            raise LabFault(
                f"labgrid coordinator {self.address} unreachable during {what}: {exc.details()}",
                component="coordinator",
            ) from None
        except LabgridError as exc:
            raise LabFault(
                f"labgrid coordinator {self.address} unreachable ({what}): {exc}; is labgrid-coordinator running "
                "there, and is it labgrid 25 or newer (gRPC)?",
                component="coordinator",
            ) from None

    def call(self, what: str, fn: Callable[[Any], Awaitable[T]], timeout: float | None = None) -> T:
        """Run ``fn(client)`` on the session's loop; a dead session is a lab fault at once."""
        if not self.alive:
            raise LabFault(
                f"labgrid coordinator {self.address}: the connection is gone (coordinator stopped or restarted)",
                component="coordinator",
            )
        return self._run(fn(self.client), what, timeout)

    def place(self, name: str) -> Any | None:
        return self.client.places.get(name)

    def close(self) -> None:
        async def stop() -> None:
            await self.client.stop()
            await self.client.close()

        try:
            self._run(stop(), "close", timeout=5)
        except (RigError, RuntimeError) as exc:
            log.debug("closing the labgrid session to %s: %s", self.address, exc)
        self._stop_loop()

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)


class Refused(RigError):
    """The coordinator refused a request about a place (already acquired, reserved for another)."""


_sessions: dict[str, Session] = {}
_sessions_lock = threading.Lock()


def session_for(address: str, timeout: float) -> Session:
    """This process's session to ``address`` (a new one if the old one died with its coordinator)."""
    with _sessions_lock:
        s = _sessions.get(address)
        if s is not None and not s.alive:
            s.close()
            s = None
        if s is None:
            s = _sessions[address] = Session(address, timeout)
        return s


@atexit.register
def _close_sessions() -> None:
    with _sessions_lock:
        for s in _sessions.values():
            s.close()
        _sessions.clear()


# ---------------------------------------------------------------------------------------------
# one device's place


class PlaceLease:
    """Acquire/release one device's place, with the holder written into its comment."""

    def __init__(self, device: Device, run_id: str | None = None) -> None:
        assert device.lab.place is not None
        self.device = device
        self.name = device.lab.place
        self.address = coordinator_address(device)
        self.run_id = run_id or os.environ.get("RIG_RUN_ID") or "adhoc"
        self.host = socket.gethostname()
        self.session: Session | None = None
        self.held = False
        #: What happened to a stale holder on acquire (shown in reports/logs), if anything.
        self.cleared: str | None = None

    # -- the coordinator's view ------------------------------------------------------------

    def _busy(self, place: Any, waited: float = 0.0, refusal: str = "") -> Exception:
        from rig.dut import DeviceBusy

        if not place.acquired:
            # Refused although nobody holds the place: its resources are another place's (the coordinator says).
            return DeviceBusy(
                f"device {self.device.name}: labgrid place {self.name} on {self.address} refused: {refusal}; "
                f"see labgrid-client -x {self.address} -p {self.name} show (its resources may be another place's)"
            )
        holder = parse_holder(place.comment or "")
        who = f"{place.acquired}" + (
            f" ({holder.text()})" if holder else (f" ({place.comment})" if place.comment else "")
        )
        if holder is not None and holder.host != self.host:
            who += f"; held from another controller ({holder.host}): this one cannot tell whether it still runs"
        wait = f" after waiting {waited:.0f} s" if waited else ""
        return DeviceBusy(
            f"device {self.device.name}: labgrid place {self.name} on {self.address} is held by {who}{wait}; "
            f"wait for that run, or set [lab] place_wait in {self.device.source_file or 'the inventory'}"
        )

    def _place(self, s: Session) -> Any:
        place = s.place(self.name)
        if place is None:
            raise LabFault(
                f"device {self.device.name}: coordinator {self.address} has no place {self.name!r} "
                f"(create it: labgrid-client -x {self.address} -p {self.name} create)",
                component="coordinator",
            )
        return place

    def acquire(self) -> None:
        """Acquire the place (waiting up to ``place_wait`` s in a reservation); write the holder comment."""
        s = self.session = session_for(self.address, self.device.lab.connect_timeout)
        place = self._place(s)
        if place.acquired:
            holder = parse_holder(place.comment or "")
            if stale_here(holder, self.host):
                assert holder is not None
                self.cleared = (
                    f"place {self.name} was still held by {place.acquired} for {holder.text()}, "
                    "a process of this host that is gone (killed?): released"
                )
                log.warning("%s: %s", self.device.name, self.cleared)
                self._release_from(s, place.acquired)
            elif self.device.lab.place_wait > 0:
                self._wait_reservation(s, place)
            else:
                raise self._busy(place)
        try:
            s.call("acquire", lambda c: self._acquire_rpc(c))
        except Refused as exc:
            # Lost a race, or a reservation is for someone else: name who holds it now.
            raise self._busy(self._place(s), refusal=str(exc)) from None
        self.held = True
        comment = holder_comment(self.run_id, os.getpid(), self.host, time.time())
        s.call("set comment", lambda c: self._comment_rpc(c, comment))

    async def _acquire_rpc(self, c: Any) -> None:
        from labgrid.remote.generated import labgrid_coordinator_pb2 as pb

        await c.stub.AcquirePlace(pb.AcquirePlaceRequest(placename=self.name))
        await c.sync_with_coordinator()

    async def _comment_rpc(self, c: Any, comment: str) -> None:
        from labgrid.remote.generated import labgrid_coordinator_pb2 as pb

        await c.stub.SetPlaceComment(pb.SetPlaceCommentRequest(placename=self.name, comment=comment))
        await c.sync_with_coordinator()

    def _release_from(self, s: Session, user: str) -> None:
        from labgrid.remote.generated import labgrid_coordinator_pb2 as pb

        async def rpc(c: Any) -> None:
            await c.stub.ReleasePlace(pb.ReleasePlaceRequest(placename=self.name, fromuser=user))
            await c.sync_with_coordinator()

        s.call("release", rpc)

    def _wait_reservation(self, s: Session, place: Any) -> None:
        """Queue in the coordinator (a reservation for this place by name) until it is ours or time is up."""
        from labgrid.remote.common import Reservation, ReservationState
        from labgrid.remote.generated import labgrid_coordinator_pb2 as pb

        async def create(c: Any) -> Any:
            flt = {"main": pb.Reservation.Filter(filter={"name": self.name})}
            resp = await c.stub.CreateReservation(pb.CreateReservationRequest(filters=flt, prio=0.0))
            return Reservation.from_pb2(resp.reservation)

        async def poll(c: Any, token: str) -> Any:
            resp = await c.stub.PollReservation(pb.PollReservationRequest(token=token))
            return Reservation.from_pb2(resp.reservation)

        async def cancel(c: Any, token: str) -> None:
            await c.stub.CancelReservation(pb.CancelReservationRequest(token=token))

        res = s.call("reserve", create)
        token = str(res.token)
        start = time.monotonic()
        deadline = start + self.device.lab.place_wait
        log.info("%s: place %s is held by %s: waiting up to %g s", self.device.name, self.name, place.acquired,
                 self.device.lab.place_wait)  # fmt: skip
        while True:
            res = s.call("poll reservation", lambda c: poll(c, token))
            if res.state in (ReservationState.allocated, ReservationState.acquired):
                return
            if res.state is not ReservationState.waiting or time.monotonic() >= deadline:
                try:
                    s.call("cancel reservation", lambda c: cancel(c, token))
                except RigError as exc:
                    log.debug("cancel reservation %s: %s", token, exc)
                raise self._busy(self._place(s), waited=time.monotonic() - start)
            time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))

    # -- the place's exported resources (issue 18, part 4: looked up here, not yet used by Dut) --

    def resources(self, cls: str) -> list[dict[str, Any]]:
        """The arguments of the held place's resources of labgrid class ``cls`` (e.g. ``NetworkSerialPort``).

        Why: an exporter on the bench publishes the console server's and the PDU's addresses, so one
        lab description could serve every controller. Read from the session's copy of the
        coordinator's resource list; the place must be held (its acquired resources are the ones).
        """
        if not self.held or self.session is None:
            raise LabFault(f"place {self.name}: not held by this run, its resources are not ours to use")
        s = self.session
        place = self._place(s)
        out: list[dict[str, Any]] = []
        for exporter, group, rcls, rname in place.acquired_resources:
            if rcls != cls:
                continue
            entry = s.client.resources.get(exporter, {}).get(group, {}).get(rname)
            if entry is None:
                raise LabFault(
                    f"place {self.name}: resource {exporter}/{group}/{rcls}/{rname} is gone (exporter disconnected?)",
                    component="coordinator",
                )
            out.append({"name": rname, **entry.args})
        return out

    def console_url(self) -> str:
        """The place's NetworkSerialPort as a pyserial URL (``rfc2217://`` or, for ``raw``, ``socket://``)."""
        ports = self.resources("NetworkSerialPort")
        if len(ports) != 1:
            raise LabFault(
                f"place {self.name}: {len(ports)} NetworkSerialPort resources (need exactly one for the console)",
                component="coordinator",
            )
        p = ports[0]
        scheme = "socket" if p.get("protocol") == "raw" else "rfc2217"
        return f"{scheme}://{p['host']}:{p['port']}"

    # -- during the run --------------------------------------------------------------------

    def lost(self) -> str | None:
        """Why the place is no longer this run's (coordinator gone or restarted, kicked), or None."""
        if not self.held:
            return None
        s = self.session
        if s is None or not s.alive:
            return (
                f"labgrid coordinator {self.address} went away (stopped or restarted) while this run held place "
                f"{self.name}: the lock was lost, another controller may have used {self.device.name}"
            )
        place = s.place(self.name)
        if place is None or place.acquired != s.identity:
            by = f" by {place.acquired}" if place is not None and place.acquired else ""
            return f"place {self.name} on {self.address} is no longer held by this run (released or kicked{by})"
        return None

    def ensure(self) -> None:
        """Before a test: a place that was lost is acquired again (or this is a lab fault / DEVICE BUSY)."""
        why = self.lost()
        if why is None:
            return
        log.warning("%s: %s; acquiring it again", self.device.name, why)
        self.held = False
        self.acquire()

    def release(self) -> None:
        """Clear the comment and release; best effort (the run is ending), failures are logged."""
        if not self.held or self.session is None:
            return
        s = self.session
        self.held = False
        try:
            place = s.place(self.name)
            if place is not None and place.acquired == s.identity:
                s.call("clear comment", lambda c: self._comment_rpc(c, ""))
                self._release_from(s, s.identity)
        except RigError as exc:
            log.warning("%s: releasing place %s on %s: %s", self.device.name, self.name, self.address, exc)
