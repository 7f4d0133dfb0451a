"""Device-to-cloud communication: policy, compiled broker ACLs, live revocation.

See ``docs/comms.md``. :mod:`.policy` holds the meaning of a policy,
:mod:`.compile` turns policies and the device registry into the table the
Mosquitto plugin (``native/``) evaluates, and :mod:`.broker` runs and feeds
the broker.
"""
