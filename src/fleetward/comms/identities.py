"""fleetward's own broker identities: one per job, each allowed its job only.

Pure. fleetward connects to the broker's service listener with one client
certificate per job (``CN=fleetward-<job>``, from the service CA of
:class:`fleetward.identity.ServicePki`). The broker plugin knows each
identity by its subject, accepts it only with the certificate the table
lists for it (its SHA-1 fingerprint), and allows it the topic patterns below
and nothing else. No identity is allowed everything; none may publish where
devices publish, so none can forge a device's telemetry or reports.

=========== ====================================== ======================================
identity    publish                                subscribe (and receive)
=========== ====================================== ======================================
ingest      nothing                                ``fw/+/+/telemetry/#``, ``fw/+/+/state/#``
commands    ``fw/+/+/cmd/+``                       nothing
ota         ``fw/+/+/ota/offer``,                  ``fw/+/+/state/ota``
            ``fw/+/+/ota/fallback``
=========== ====================================== ======================================

The meaning, which the broker plugin reproduces exactly (the differential
tests check it):

1. An identity the table does not list, or one connecting with a
   certificate other than its own, is denied everything (the plugin checks
   this; :func:`decide_service` is about listed identities).
2. ``publish``: the topic name must match one of the identity's publish
   patterns.
3. ``subscribe``: the filter, less a ``$share/<group>/`` prefix (MQTT 5
   shared subscriptions), must be covered by one of its subscribe patterns:
   every topic the filter can match also matches the pattern.
4. ``receive`` (a delivery): the topic name must match one of its subscribe
   patterns.
5. Everything else is denied.

Patterns are MQTT filters of literals, ``+`` and a final ``#``, under
``fw/``: unlike device roles they span tenants (fleetward serves them all),
so they carry no ``{variables}``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from fleetward.comms.policy import Action, Decision, Rule, check_topic
from fleetward.errors import InvalidInputError

__all__ = [
    "SERVICE_IDENTITIES",
    "SERVICE_JOBS",
    "ServiceIdentity",
    "decide_service",
    "service_username",
]

_JOB = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
_LEVEL = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_SHARE = "$share"


def service_username(job: str) -> str:
    """The MQTT username of a service identity (its certificate subject in
    RFC 2253 form, as ``use_subject_as_username`` renders it)."""
    return f"CN=fleetward-{job}"


def _pattern(text: str) -> tuple[str, ...]:
    levels = tuple(text.split("/"))
    if len(levels) < 2 or levels[0] != "fw":
        raise ValueError(f"service pattern {text!r} must start with 'fw/'")
    for i, level in enumerate(levels):
        if level == "#" and i != len(levels) - 1:
            raise ValueError(f"service pattern {text!r}: '#' must be the last level")
        if level not in ("+", "#") and not _LEVEL.fullmatch(level):
            raise ValueError(f"service pattern {text!r}: bad level {level!r}")
    return levels


@dataclass(frozen=True)
class ServiceIdentity:
    """One of fleetward's broker identities and the topics of its job.

    Raises:
        ValueError: a bad job name or pattern (the table format could not
            carry it).
    """

    job: str
    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.job, str) or not _JOB.fullmatch(self.job):
            raise ValueError(f"bad service identity name {self.job!r}")
        for text in (*self.publish, *self.subscribe):
            _pattern(text)

    @property
    def username(self) -> str:
        """Its MQTT username (``CN=fleetward-<job>``)."""
        return service_username(self.job)

    @property
    def role(self) -> str:
        """How decisions name it (never a tenant role's name: those have no ':')."""
        return f"service:{self.job}"


SERVICE_IDENTITIES: Mapping[str, ServiceIdentity] = {
    s.job: s
    for s in (
        ServiceIdentity("ingest", subscribe=("fw/+/+/telemetry/#", "fw/+/+/state/#")),
        ServiceIdentity("commands", publish=("fw/+/+/cmd/+",)),
        ServiceIdentity(
            "ota",
            publish=("fw/+/+/ota/offer", "fw/+/+/ota/fallback"),
            subscribe=("fw/+/+/state/ota",),
        ),
    )
}
"""The identities fleetward connects with (telemetry ingest, the command
sender, the OTA campaign driver)."""

SERVICE_JOBS = tuple(SERVICE_IDENTITIES)


def _matches(pattern: Sequence[str], topic: Sequence[str]) -> bool:
    for i, level in enumerate(pattern):
        if level == "#":
            return True  # '#' also matches the parent level itself
        if i >= len(topic):
            return False
        if level != "+" and level != topic[i]:
            return False
    return len(topic) == len(pattern)


def _covers(pattern: Sequence[str], filt: Sequence[str]) -> bool:
    for i, level in enumerate(pattern):
        if level == "#":
            return True
        if i >= len(filt) or filt[i] == "#":
            return False
        if level != "+" and (filt[i] == "+" or level != filt[i]):
            return False
    return len(filt) == len(pattern)


def _unshare(levels: tuple[str, ...]) -> tuple[str, ...] | None:
    """The filter of a shared subscription (None: a malformed one)."""
    if levels[0] != _SHARE:
        return levels
    if len(levels) < 3 or levels[1] in ("+", "#"):
        return None
    return levels[2:]


def decide_service(identity: ServiceIdentity, action: Action, topic: str) -> Decision:
    """Decide one publish, subscribe or receive for a service identity.

    Raises:
        InvalidInputError: ``action`` is unknown or ``topic`` is malformed.
    """
    if action not in ("publish", "subscribe", "receive"):
        raise InvalidInputError("action must be one of publish, subscribe, receive")
    levels = check_topic(topic, is_filter=action == "subscribe")
    if action == "subscribe":
        unshared = _unshare(levels)
        if unshared is None:
            return Decision(False, None, "malformed shared subscription")
        for text in identity.subscribe:
            if _covers(_pattern(text), unshared):
                return Decision(True, Rule(identity.role, "allow", "subscribe", text), "allowed")
    else:
        patterns = identity.publish if action == "publish" else identity.subscribe
        kind: Literal["publish", "subscribe"] = "publish" if action == "publish" else "subscribe"
        for text in patterns:
            if _matches(_pattern(text), levels):
                return Decision(True, Rule(identity.role, "allow", kind, text), "allowed")
    return Decision(
        False, None, f"not the job of fleetward-{identity.job} (docs/comms.md lists its topics)"
    )
