/* fleetward ACL table: a thin evaluator of the policy compiled by
 * fleetward.comms.compile. The meaning lives in fleetward/comms/policy.py;
 * tests/comms/test_differential.py checks this code against it. No
 * Mosquitto or OpenSSL dependency, so the tests can load it alone. */
#ifndef FW_ACL_H
#define FW_ACL_H

#include <stddef.h>

#define FW_PUBLISH 0
#define FW_SUBSCRIBE 1
#define FW_RECEIVE 2

typedef struct fw_table fw_table;
typedef struct fw_device fw_device;

/* Parse a table (text is copied). Returns NULL and fills err on failure. */
fw_table *fw_table_load(const char *text, size_t len, char *err, size_t errlen);
void fw_table_free(fw_table *table);

const fw_device *fw_table_find(const fw_table *table, const char *username);
long fw_table_max_payload(const fw_table *table);
long fw_table_generation(const fw_table *table);

/* 1 allow, 0 deny. topic must be a valid MQTT name (filter for SUBSCRIBE). */
int fw_check(const fw_table *table, const fw_device *device, int action, const char *topic);

/* Whether the device accepts a certificate with this fingerprint: only
 * the exact certificates the table lists (a rogue CA cannot mint them). */
int fw_serial_ok(const fw_device *device, const unsigned char *serial, size_t len);

/* Whether every serial of old_device is still accepted by new_device. */
int fw_serials_kept(const fw_device *old_device, const fw_device *new_device);

/* Iterate devices: index 0..fw_table_count-1. */
size_t fw_table_count(const fw_table *table);
const fw_device *fw_table_at(const fw_table *table, size_t i);
const char *fw_device_username(const fw_device *device);

/* For tests: load + check in one call through ctypes. */
int fw_check_text(const fw_table *table, const char *username, int action, const char *topic);

/* fleetward's own identities (fleetward/comms/identities.py): each allowed
 * the topic patterns of its job, and only with its own certificates. */
typedef struct fw_service fw_service;
const fw_service *fw_table_find_service(const fw_table *table, const char *username);
/* Whether a certificate fingerprint (SHA-1 of the DER) is one of the identity's. */
int fw_service_cert_ok(const fw_service *service, const unsigned char *digest, size_t len);
/* 1 allow, 0 deny (publish: a publish pattern matches; subscribe: a subscribe
 * pattern covers the filter less any $share/<group>/; receive: a subscribe
 * pattern matches). */
int fw_service_check(const fw_service *service, int action, const char *topic);
/* Whether every certificate of old_service is still accepted by new_service. */
int fw_service_certs_kept(const fw_service *old_service, const fw_service *new_service);
size_t fw_table_service_count(const fw_table *table);
const fw_service *fw_table_service_at(const fw_table *table, size_t i);
const char *fw_service_username(const fw_service *service);
/* For tests: find + check in one call (0 for an unknown identity). */
int fw_service_check_text(const fw_table *table, const char *username, int action, const char *topic);

#endif
