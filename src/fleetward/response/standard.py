"""The playbooks fleetward ships (``fleetward playbook install-standard``).

They are ordinary playbooks: a tenant installs them as version 1 and edits
them like its own.
"""

from __future__ import annotations

__all__ = ["STANDARD"]

STANDARD: dict[str, str] = {
    "emergency-ota": """\
name: emergency-ota
description: >
  Push a fixed release to every device of a product at once (one wave).
  Devices that are offline are tracked until they report the new version.
params: {product: null, release: null}
cohort: {product: "{product}"}
confirm_above: 1000
approvals: 2
steps:
  - {action: emergency-release, release: "{release}"}
""",
    "mass-credential-revocation": """\
name: mass-credential-revocation
description: >
  Cut off devices whose keys may be in the wrong hands: revoke every
  certificate they hold. The broker disconnects them within seconds and
  refuses their handshakes from then on.
params: {devices: null, reason: keyCompromise}
cohort: {devices: "{devices}"}
confirm_above: 100
approvals: 1
steps:
  - {action: revoke, reason: "{reason}"}
""",
    "cohort-quarantine": """\
name: cohort-quarantine
description: >
  Isolate a cohort (the devices an alert names) without cutting it off:
  quarantined devices may only report boot evidence and receive updates.
params: {}
cohort: {alert: true}
confirm_above: 500
approvals: 0
steps:
  - {action: quarantine, reason: cohort quarantine}
""",
    "compromised-factory": """\
name: compromised-factory
description: >
  A factory batch is suspect: once approved, quarantine it and revoke its
  credentials. The devices must be re-provisioned. (For an immediate
  quarantine while approvals are sought, run cohort-quarantine first.)
params: {batch: null}
cohort: {batch: "{batch}"}
confirm_above: 1000
approvals: 1
steps:
  - {action: quarantine, reason: compromised factory}
  - {action: revoke, reason: keyCompromise}
""",
    "compromised-issuing-ca": """\
name: compromised-issuing-ca
description: >
  Replace the environment's issuing CA and have every device renew under the
  new one (with its existing, never exported key). Devices offline during
  the run are tracked until they renew. The old CA stays trusted for
  `window` seconds (7 days by default); each of its certificates is revoked
  (`reason`) as soon as its device holds a new one, and the old CA is
  distrusted (removed from every trust file, its remaining certificates
  revoked) once no device depends on it, or when the window closes.
params: {window: 604800, reason: cACompromise}
cohort: {all: true}
confirm_above: 100
approvals: 1
steps:
  - {action: rotate-ca, window: "{window}", reason: "{reason}"}
  - {action: renew}
  - {action: distrust-ca}
""",
}
