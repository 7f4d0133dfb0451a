"""Device-to-cloud communication: policy, compiled broker ACLs, live revocation.

See ``docs/comms.md``. :mod:`.policy` holds the meaning of a policy,
:mod:`.compile` turns policies and the device registry into the table the
Mosquitto plugin (``native/``) evaluates; :mod:`.mosquitto_conf` renders the
broker's configuration and PKI, :mod:`.sync` keeps its table and trust files
in step with the database, and :mod:`.mosquitto` runs it. (The runtime
schedules the sync and the supervision.)
"""
