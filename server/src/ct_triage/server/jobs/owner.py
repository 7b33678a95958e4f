"""Lease owners: which process holds a job, named so that its own host can tell it is gone.

A claim records, beside the worker's name, the *lease owner* of the claiming process:
``SCOPE|PID|START`` where ``SCOPE`` is the host name, the kernel's boot id and the PID
namespace (the scope in which a PID means one process) and ``START`` the process's start
time in clock ticks since boot (``/proc/PID/stat`` field 22). A process of the same scope can
then tell, at once and without waiting for the lease, that the owner is gone: no process with
that PID, a PID reused by a process started at another time, or a zombie. Another host's (or
container's, or boot's) owner is never judged: its leases expire as before.

Only Linux has ``/proc``; elsewhere :func:`current_owner` is None, claims record no owner
and dead leases are released by their expiry alone.
"""

from __future__ import annotations

import functools
import os
import socket
from dataclasses import dataclass
from pathlib import Path

_PROC = Path("/proc")


def _stat_fields(pid: int | str) -> list[str] | None:
    """Fields 3… of ``/proc/PID/stat`` (state first), or None when there is no such process."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # field 2 (the command) is in parentheses and may hold spaces or parentheses itself
    return text[text.rindex(")") + 2 :].split()


@dataclass(frozen=True, slots=True)
class LeaseOwner:
    """One process: its scope (host, boot, PID namespace), PID and start time."""

    scope: str
    pid: int
    start: str

    @property
    def token(self) -> str:
        """The form stored with a claim: ``SCOPE|PID|START``."""
        return f"{self.scope}|{self.pid}|{self.start}"

    @classmethod
    def parse(cls, token: str | None) -> LeaseOwner | None:
        """The owner named by ``token``, or None (no owner recorded, or not one of ours)."""
        parts = (token or "").rsplit("|", 2)
        if len(parts) != 3 or not parts[1].isdigit():
            return None
        return cls(scope=parts[0], pid=int(parts[1]), start=parts[2])

    def is_gone(self) -> bool:
        """Whether this process has ended (or is a zombie); only meaningful in its own scope."""
        fields = _stat_fields(self.pid)
        if fields is None or len(fields) < 20:
            return True
        state, start = fields[0], fields[19]  # fields 3 and 22 of /proc/PID/stat
        return state in ("Z", "X") or start != self.start


def _scope() -> str | None:
    try:
        boot = (_PROC / "sys/kernel/random/boot_id").read_text().strip()
        pid_ns = os.readlink(_PROC / "self/ns/pid")  # e.g. pid:[4026531836]
    except OSError:
        return None
    return f"{socket.gethostname()}/{boot}/{pid_ns}"


@functools.cache
def _owner_of(pid: int) -> LeaseOwner | None:
    scope = _scope()
    fields = _stat_fields(pid)
    if scope is None or fields is None or len(fields) < 20:
        return None
    return LeaseOwner(scope=scope, pid=pid, start=fields[19])


def current_owner() -> LeaseOwner | None:
    """The lease owner of this process (a forked child is its own), or None off Linux."""
    return _owner_of(os.getpid())


__all__ = ["LeaseOwner", "current_owner"]
