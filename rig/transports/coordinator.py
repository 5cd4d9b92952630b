"""Devices as labgrid places: one laptop, several controllers, one holder at a time.

The local device lock (rig.device.dut.DeviceLock, an ``flock``) only excludes runs on one controller. A
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

Resources from exporters: with ``[console] from_place`` / ``[power] kind = "pdu"`` + ``from_place`` the
console server and the PDU outlet are the place's ``NetworkSerialPort`` / ``NetworkPowerPort``, read
after the acquire (:func:`place_device`, called by ``Dut.open``): one lab description for every
controller. Only the holder may use them; one missing, several unnamed, or one whose exporter is
offline (the coordinator keeps it as the place's orphan) is a lab fault naming place and resource.

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

from pydantic import ValidationError

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


@dataclass(frozen=True)
class PlaceResource:
    """One exported resource of a held place: its name (the match's rename, else the exporter's),
    ``exporter/group/class/name`` and labgrid's arguments (host, port, model, index...)."""

    name: str
    path: str
    args: dict[str, Any]
    #: Why it cannot be used now (its exporter is offline, or says it is unavailable), else None.
    offline: str | None = None


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
            # Our own deadline too: wait_for waits for a cancelled call to unwind, and a gRPC call to a
            # coordinator that was killed can take its time doing that (seen once at a process's exit).
            return fut.result(timeout=(timeout or self.timeout) + 5)
        except TimeoutError:
            fut.cancel()
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
        """The coordinator's place ``name`` as it is now (None: there is no such place).

        Why the sync first: the session's places are a copy that the coordinator streams to it, so an
        acquire another controller made a moment ago may not have arrived yet. An acquire of ours that
        the coordinator then refused read as "nobody holds it" instead of naming the holder.
        """

        async def sync(c: Any) -> None:
            await c.sync_with_coordinator()

        self.call("sync", sync)
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
        from rig.device.dut import DeviceBusy

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

    # -- the place's exported resources ---------------------------------------------------

    def resources(self, cls: str) -> list[PlaceResource]:
        """The held place's acquired resources of labgrid class ``cls`` (e.g. ``NetworkSerialPort``).

        Why from the acquired place: labgrid hands a place's resources to its holder only, and which
        exporter resources those are is the lab's description (the place's matches), kept in one
        place for every controller. A resource whose exporter went away (the coordinator keeps it as
        an orphan of the place) or that its exporter calls unavailable is a lab fault naming both.
        """
        if not self.held or self.session is None:
            raise LabFault(f"place {self.name}: not held by this run, its resources are not ours to use",
                           component="coordinator")  # fmt: skip
        s = self.session
        place = self._place(s)
        out: list[PlaceResource] = []
        for path in place.acquired_resources:
            exporter, group, rcls, rname = path
            if rcls != cls:
                continue
            match = place.getmatch(path)
            name = match.rename if match is not None and match.rename else rname
            where = "/".join(path)
            entry = s.client.resources.get(exporter, {}).get(group, {}).get(rname)
            # labgrid's client keeps a deleted resource as an entry with no data (its exporter left).
            if entry is None or not entry.data:
                out.append(PlaceResource(name, where, {}, offline=(
                    f"exporter {exporter} is offline (disconnected from {self.address}); start it again on its "
                    f"bench (labgrid-client -x {self.address} resources lists what is online)")))  # fmt: skip
            elif not entry.data.get("avail"):
                out.append(PlaceResource(name, where, dict(entry.args), offline=(
                    f"its exporter {exporter} says so (what it exports is missing on the bench)")))  # fmt: skip
            else:
                out.append(PlaceResource(name, where, dict(entry.args)))
        return out

    def resource(self, cls: str, wanted: str | None, field: str) -> PlaceResource:
        """The one resource of ``cls`` the device uses: the only one, or the one named ``wanted``.

        ``field`` is the inventory section that names it (``[console]``, ``[power]``), for the message.
        """
        found = self.resources(cls)
        names = ", ".join(r.name for r in found)
        inv = self.device.source_file or "the inventory file"
        if not found:
            raise LabFault(
                f"device {self.device.name}: place {self.name} on {self.address} has no {cls} ({field} from_place in "
                f"{inv}): is the bench's exporter running and does the place match its {cls}? "
                f"(labgrid-client -x {self.address} -p {self.name} show; add-match EXPORTER/GROUP/{cls})",
                component="coordinator",
            )
        if wanted is not None:
            for r in found:
                if r.name == wanted:
                    return self._online(r, cls)
            raise LabFault(
                f"device {self.device.name}: place {self.name} on {self.address} has no {cls} named {wanted!r} "
                f"({field} resource in {inv}); its {cls} resources: {names}",
                component="coordinator",
            )
        if len(found) == 1:
            return self._online(found[0], cls)
        raise LabFault(
            f"device {self.device.name}: place {self.name} on {self.address} has {len(found)} {cls} resources "
            f"({names}): say which one with {field} resource = \"NAME\" in {inv}",
            component="coordinator",
        )

    def _online(self, r: PlaceResource, cls: str) -> PlaceResource:
        if r.offline is not None:
            raise LabFault(f"device {self.device.name}: place {self.name}'s {cls} {r.name} ({r.path}) is unavailable: "
                           f"{r.offline}", component="coordinator")  # fmt: skip
        return r

    def console_url(self, wanted: str | None = None) -> tuple[str, int]:
        """The place's NetworkSerialPort as a pyserial URL and its speed.

        ``rfc2217://host:port?ign_set_control`` (labgrid's own serial driver opens it so too: a
        console server on a pty has no modem lines to answer for) or, for protocol ``raw``,
        ``socket://host:port``.
        """
        r = self.resource("NetworkSerialPort", wanted, "[console]")
        host, port, protocol = r.args.get("host"), r.args.get("port"), r.args.get("protocol", "rfc2217")
        if not host or not isinstance(port, int) or protocol not in ("rfc2217", "raw"):
            raise LabFault(
                f"device {self.device.name}: place {self.name}'s NetworkSerialPort {r.name} ({r.path}) has host "
                f"{host!r}, port {port!r}, protocol {protocol!r}: it needs a host, a port and protocol rfc2217 or "
                "raw; fix the exporter's configuration",
                component="coordinator",
            )
        h = f"[{host}]" if ":" in str(host) else str(host)
        url = f"socket://{h}:{port}" if protocol == "raw" else f"rfc2217://{h}:{port}?ign_set_control"
        speed = r.args.get("speed", 115200)
        return url, speed if isinstance(speed, int) and speed > 0 else 115200

    def power_port(self, wanted: str | None = None) -> PlaceResource:
        """The place's NetworkPowerPort (labgrid args ``model``, ``host``, ``index``)."""
        return self.resource("NetworkPowerPort", wanted, "[power]")

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


# ---------------------------------------------------------------------------------------------
# the device as this place's resources describe it


def place_device(device: Device, lease: PlaceLease) -> Device:
    """``device`` with its ``from_place`` console and/or power outlet filled in from the held place.

    Why a whole Device: the rest of the rig (Dut, reports, power back ends) reads the inventory's
    schema and nothing else, so a console or outlet from an exporter is validated by the same schema
    as one written in a file. A resource the schema refuses (an unknown PDU model, a bad address)
    is a lab fault naming the place and the resource: the exporter's configuration is wrong, not the
    laptop.
    """
    from rig.inventory import ConsoleConfig, PduPower

    update: dict[str, Any] = {}
    if device.console is not None and device.console.from_place:
        url, speed = lease.console_url(device.console.resource)
        update["console"] = _validated(lambda: ConsoleConfig(url=url, baud=speed), device, lease,
                                       f"NetworkSerialPort {device.console.resource or ''}".rstrip())  # fmt: skip
    power = device.power
    if isinstance(power, PduPower) and power.from_place:
        r = lease.power_port(power.resource)
        fields = power.model_dump(exclude={"from_place", "resource"}, exclude_none=True)
        fields.update(model=r.args.get("model"), host=r.args.get("host"), outlet=r.args.get("index"))
        update["power"] = _validated(lambda: PduPower.model_validate(fields), device, lease,
                                     f"NetworkPowerPort {r.name} ({r.path})")  # fmt: skip
        log.info("%s: power outlet from place %s: %s (%s)", device.name, lease.name, r.path, fields["model"])
    if "console" in update:
        log.info("%s: console from place %s: %s", device.name, lease.name, update["console"].url)
    return device.model_copy(update=update)


def _validated(make: Callable[[], T], device: Device, lease: PlaceLease, what: str) -> T:
    """``make()``; the schema's refusal of what an exporter published is a lab fault naming it."""
    try:
        return make()
    except ValidationError as exc:
        problems = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
        raise LabFault(
            f"device {device.name}: place {lease.name}'s {what} cannot be used: {problems}; fix the exporter's "
            "configuration for it",
            component="coordinator",
        ) from None
