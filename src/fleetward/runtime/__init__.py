"""The running system: application context, workers, and the stack that runs them.

- :mod:`.context`: :class:`AppContext` (database, PKI, settings of one
  running fleetward), built once per process.
- :mod:`.worker`: :class:`PeriodicWorker`, the one base of every background
  loop (interval, jitter, lease, backoff, clean stop, pause/step, health).
- :mod:`.publisher`, :mod:`.broker`, :mod:`.workers`: the workers; each runs
  a domain's round function.
- :mod:`.stack`: what ``fleetward serve`` and ``fleetward up`` assemble.
- :mod:`.installation`: what ``fleetward init`` creates.

The runtime sits between the entry points (``cli``, ``api``, ``web``) and
the domains: it imports domains, no domain imports it. See
``docs/architecture.md``.
"""

from fleetward.runtime.context import AppContext
from fleetward.runtime.worker import Every, PeriodicWorker, WorkerHealth

__all__ = ["AppContext", "Every", "PeriodicWorker", "WorkerHealth"]
