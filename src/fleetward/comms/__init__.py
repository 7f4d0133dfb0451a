"""Device-to-cloud communication: policy, compiled broker ACLs, live revocation.

See ``docs/comms.md``. :mod:`.policy` holds the meaning of a policy,
:mod:`.compile` turns policies and the device registry into the table the
Mosquitto plugin (``native/``) evaluates; :mod:`.mosquitto_conf` renders the
broker's configuration and PKI, :mod:`.sync` keeps its table and trust files
in step with the database, and :mod:`.mosquitto` runs it. (The runtime
schedules the sync and the supervision.)

The public face: policy versions, explanations and commands
(:mod:`.service`), and the broker connections of fleetward's own identities
(:mod:`.commands`: one per job, :mod:`.identities`) that ingest, the OTA
driver and response runs use. :mod:`.policy`, :mod:`.identities` and
:mod:`.compile` are pure and may be imported directly.
"""

from fleetward.comms.commands import (
    BrokerUnavailableError,
    CommandSender,
    broker_info,
    service_client,
)
from fleetward.comms.identities import SERVICE_JOBS
from fleetward.comms.policy import QUARANTINE
from fleetward.comms.service import (
    PolicyVersion,
    authorize_command,
    broker_snapshot,
    current_policy,
    denial_counts,
    explain,
    explain_service,
    get_policy,
    list_events,
    list_versions,
    record_acl_events,
    record_handshake_refusals,
    set_policy,
    subject_of,
)

__all__ = [
    "QUARANTINE",
    "SERVICE_JOBS",
    "BrokerUnavailableError",
    "CommandSender",
    "PolicyVersion",
    "authorize_command",
    "broker_info",
    "broker_snapshot",
    "current_policy",
    "denial_counts",
    "explain",
    "explain_service",
    "get_policy",
    "list_events",
    "list_versions",
    "record_acl_events",
    "record_handshake_refusals",
    "service_client",
    "set_policy",
    "subject_of",
]
