"""Boot attestation: nonces, EAT evidence signed by the device key, appraisal.

See ``docs/attestation.md``. The public face: the verifier's use cases
(:mod:`.service`) and the verdict they return. :mod:`.evidence` (claims,
signing, verification, appraisal) is pure and may be imported directly: the
agent signs its evidence with it.
"""

from fleetward.attestation.evidence import Verdict
from fleetward.attestation.service import (
    NONCE_TTL,
    issue_nonce,
    prune_nonces,
    record_refusal,
    submit,
)

__all__ = ["NONCE_TTL", "Verdict", "issue_nonce", "prune_nonces", "record_refusal", "submit"]
