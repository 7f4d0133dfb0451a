"""Every table of every domain, gathered so Alembic sees one metadata.

Here, above the domains: the store knows no domain; migrations load this
module by name (``store/migrations/env.py``)."""

from fleetward.attestation import models as _attestation  # noqa: F401
from fleetward.audit import models as _audit  # noqa: F401
from fleetward.comms import models as _comms  # noqa: F401
from fleetward.detection import models as _detection  # noqa: F401
from fleetward.identity import models as _identity  # noqa: F401
from fleetward.ota import models as _ota  # noqa: F401
from fleetward.provisioning import models as _provisioning  # noqa: F401
from fleetward.response import models as _response  # noqa: F401
from fleetward.store import lease as _lease  # noqa: F401
from fleetward.store.db import Base
from fleetward.telemetry import models as _telemetry  # noqa: F401
from fleetward.tenancy import models as _tenancy  # noqa: F401
from fleetward.trustmap import models as _trustmap  # noqa: F401
from fleetward.vulns import models as _vulns  # noqa: F401

metadata = Base.metadata

__all__ = ["metadata"]
