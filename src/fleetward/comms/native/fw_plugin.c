/* fleetward Mosquitto plugin (plugin API v5, Mosquitto 2.0).
 *
 * Thin by design: fleetward compiles policy and registry into a table file
 * (fw_acl.c documents the format); this plugin
 *  - answers every ACL check (publish, subscribe, delivery) from the table,
 *    after checking that the client's certificate (its SHA-1 fingerprint) is one the
 *    table still lists for that identity: a revoked certificate is mute even
 *    before the CRL reaches the TLS layer, and a certificate minted by a
 *    rogue CA with someone else's subject and serial is not theirs;
 *  - answers fleetward's own identities (one per job: ingest, commands,
 *    ota) from their patterns in the table, each only with its own
 *    certificate: no identity is allowed everything;
 *  - re-reads the table when its file changes (checked on every tick, at
 *    most every 50 ms) and kicks every identity that disappeared or lost a
 *    certificate: a revoked device is cut off, not merely muted;
 *  - counts denials per identity and appends them, aggregated per second,
 *    to an events file that fleetward ingests.
 *
 * Options (plugin_opt_*): table <path>, events <path>.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "fw_acl.h"

#define STAT_EVERY_NS 50000000L
#define FLUSH_EVERY_NS 1000000000L
#define MAX_AGG 4096

typedef struct {
	char *username, *kind, *action, *topic;
	unsigned long count;
} agg_entry;

static mosquitto_plugin_id_t *plugin_id;
static char *table_path, *events_path;
static fw_table *table;
static struct stat table_stat;
static long last_stat_ns, last_flush_ns;
static agg_entry agg[MAX_AGG];
static size_t nagg;
static unsigned long agg_overflow;
/* Identities to disconnect on the next tick. Unbounded: a cohort revocation
 * of any size is cut off in one pass. */
static char **kicks;
static size_t nkicks, capkicks;

static long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

static void record(const char *username, const char *kind, const char *action, const char *topic)
{
	if (!events_path) return;
	for (size_t i = 0; i < nagg; i++) {
		agg_entry *e = &agg[i];
		/* Topics are stored cut at 256 bytes: compare what is stored. */
		if (!strcmp(e->username, username) && !strcmp(e->kind, kind) &&
		    !strcmp(e->action, action) && !strncmp(e->topic, topic, 256)) {
			e->count++;
			return;
		}
	}
	if (nagg == MAX_AGG) { agg_overflow++; return; }
	agg_entry *e = &agg[nagg];
	e->username = strdup(username);
	e->kind = strdup(kind);
	e->action = strdup(action);
	/* Topics are logged for evidence; bound what one record can carry. */
	e->topic = strndup(topic, 256);
	if (!e->username || !e->kind || !e->action || !e->topic) {
		free(e->username); free(e->kind); free(e->action); free(e->topic);
		agg_overflow++;
		return;
	}
	e->count = 1;
	nagg++;
}

static void flush_events(void)
{
	if (!events_path || (nagg == 0 && agg_overflow == 0)) return;
	int fd = open(events_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
	FILE *f = fd >= 0 ? fdopen(fd, "a") : NULL;
	time_t now = time(NULL);
	for (size_t i = 0; i < nagg; i++) {
		agg_entry *e = &agg[i];
		if (f) {
			/* Topics may hold tabs or newlines; escape both for the line format. */
			fprintf(f, "%ld\t%s\t%s\t%s\t", (long)now, e->username, e->kind, e->action);
			for (const char *p = e->topic; *p; p++) {
				if (*p == '\t' || *p == '\n' || *p == '\r' || *p == '\\') fprintf(f, "\\x%02x", (unsigned char)*p);
				else fputc(*p, f);
			}
			fprintf(f, "\t%lu\n", e->count);
		}
		free(e->username); free(e->kind); free(e->action); free(e->topic);
	}
	if (f && agg_overflow) fprintf(f, "%ld\t\toverflow\t\t\t%lu\n", (long)now, agg_overflow);
	if (f) fclose(f);
	else if (fd >= 0) close(fd);
	nagg = 0;
	agg_overflow = 0;
}

static void queue_kick(const char *username)
{
	/* A flooding client repeats itself: skip the same name twice in a row. */
	if (nkicks && !strcmp(kicks[nkicks - 1], username)) return;
	if (nkicks == capkicks) {
		size_t cap = capkicks ? capkicks * 2 : 256;
		char **grown = realloc(kicks, cap * sizeof(char *));
		if (!grown) {
			mosquitto_log_printf(MOSQ_LOG_ERR, "fleetward: out of memory queueing a kick");
			return;
		}
		kicks = grown;
		capkicks = cap;
	}
	char *copy = strdup(username);
	if (copy) kicks[nkicks++] = copy;
}

static void run_kicks(void)
{
	/* The broker forces each client id to its username
	 * (use_username_as_clientid), so a kick is one hash lookup by client id;
	 * kicking by username would walk every client for every kick.
	 *
	 * with_will is true on purpose: the client-id table also holds sessions
	 * whose connection is gone (MQTT 5, clean start off, a session expiry
	 * interval, as fleetward's agents connect). Mosquitto 2.0.11 kicks with
	 * with_will false by marking the client "disconnecting" first, so a
	 * session that is already disconnected is disconnected a second time and
	 * lands on the session-expiry list twice. When it expires or its device
	 * reconnects, one entry is left pointing at the freed client; the next
	 * expiry check expires whatever client lives at that address by then and
	 * the broker dies with SIGSEGV (tests/comms/test_plugin_kicks.py). With
	 * with_will true Mosquitto leaves a disconnected session alone and still
	 * sends a live one DISCONNECT (0x98) and closes it. The will that a live
	 * one leaves is an ACL check like any publish: on_acl_check refuses it,
	 * because a kicked identity's certificate is no longer listed and 2.0.11
	 * checks the will after it has freed the TLS session. */
	for (size_t i = 0; i < nkicks; i++) {
		mosquitto_kick_client_by_clientid(kicks[i], true);
		free(kicks[i]);
	}
	nkicks = 0;
}

static void load_table(bool initial)
{
	struct stat st;
	if (stat(table_path, &st) != 0) {
		if (initial) mosquitto_log_printf(MOSQ_LOG_WARNING, "fleetward: no table at %s: denying all", table_path);
		return;
	}
	if (!initial && st.st_mtim.tv_sec == table_stat.st_mtim.tv_sec &&
	    st.st_mtim.tv_nsec == table_stat.st_mtim.tv_nsec && st.st_ino == table_stat.st_ino &&
	    st.st_size == table_stat.st_size)
		return;
	FILE *f = fopen(table_path, "rb");
	if (!f) return;
	/* The file may have been replaced between stat() and fopen(): size and
	 * identity come from what was opened. */
	if (fstat(fileno(f), &st) != 0) { fclose(f); return; }
	char *buf = malloc((size_t)st.st_size + 1);
	size_t got = buf ? fread(buf, 1, (size_t)st.st_size, f) : 0;
	fclose(f);
	if (!buf || got != (size_t)st.st_size) { free(buf); return; }
	char err[128];
	fw_table *next = fw_table_load(buf, got, err, sizeof(err));
	free(buf);
	if (!next) {
		/* Keep enforcing the previous table; fleetward rewrites atomically,
		 * so a bad table is a bug worth shouting about. */
		mosquitto_log_printf(MOSQ_LOG_ERR, "fleetward: table %s rejected: %s", table_path, err);
		table_stat = st;
		return;
	}
	if (table) {
		for (size_t i = 0; i < fw_table_count(table); i++) {
			const fw_device *old = fw_table_at(table, i);
			const fw_device *now = fw_table_find(next, fw_device_username(old));
			if (!now || !fw_serials_kept(old, now)) queue_kick(fw_device_username(old));
		}
		/* Service identities keep their own client ids (several connections
		 * share one identity), so they are kicked by username: a walk over
		 * every client, but only when a service certificate changed. */
		for (size_t i = 0; i < fw_table_service_count(table); i++) {
			const fw_service *old = fw_table_service_at(table, i);
			const fw_service *now = fw_table_find_service(next, fw_service_username(old));
			if (!now || !fw_service_certs_kept(old, now))
				mosquitto_kick_client_by_username(fw_service_username(old), true);
		}
	}
	fw_table_free(table);
	table = next;
	table_stat = st;
	mosquitto_log_printf(MOSQ_LOG_INFO, "fleetward: table generation %ld, %zu identities, %zu to cut off",
	                     fw_table_generation(table), fw_table_count(table), nkicks);
	run_kicks();
}

static int on_acl_check(int event, void *event_data, void *userdata)
{
	(void)event; (void)userdata;
	struct mosquitto_evt_acl_check *ed = event_data;
	const char *username = mosquitto_client_username(ed->client);
	const char *action;
	int fw_action;
	switch (ed->access) {
	case MOSQ_ACL_WRITE: action = "publish"; fw_action = FW_PUBLISH; break;
	case MOSQ_ACL_READ: action = "receive"; fw_action = FW_RECEIVE; break;
	case MOSQ_ACL_SUBSCRIBE: action = "subscribe"; fw_action = FW_SUBSCRIBE; break;
	case MOSQ_ACL_UNSUBSCRIBE: return MOSQ_ERR_SUCCESS;
	default: return MOSQ_ERR_ACL_DENIED;
	}
	if (!username || !table) return MOSQ_ERR_ACL_DENIED;
	unsigned char digest[EVP_MAX_MD_SIZE];
	unsigned int digest_len = 0;
	X509 *cert = mosquitto_client_certificate(ed->client);
	/* Every live connection has a certificate (require_certificate). A check
	 * without one is for a client whose connection is gone: a delivery to a
	 * disconnected session, or a will sent after the TLS session was freed.
	 * Such a check is refused below but queues no kick: there is nothing to
	 * cut off (see run_kicks). */
	bool connected = cert != NULL;
	if (cert) {
		/* SHA-1 of the whole certificate: OpenSSL computed it once when it
		 * verified the handshake and X509_digest returns that cached value,
		 * so this costs nothing per message. Matching a certificate that
		 * already exists needs a second preimage, which SHA-1 still resists. */
		if (!X509_digest(cert, EVP_sha1(), digest, &digest_len)) digest_len = 0;
		X509_free(cert);
	}
	const fw_service *service = fw_table_find_service(table, username);
	if (service) {
		/* Only the identity's own certificate is that identity, and it may
		 * do its job only. */
		if (!digest_len || !fw_service_cert_ok(service, digest, digest_len)) {
			record(username, "stale-certificate", action, ed->topic);
			return MOSQ_ERR_ACL_DENIED;
		}
		if (fw_action == FW_PUBLISH && (long)ed->payloadlen > fw_table_max_payload(table)) {
			record(username, "payload-too-large", action, ed->topic);
			return MOSQ_ERR_ACL_DENIED;
		}
		if (!fw_service_check(service, fw_action, ed->topic)) {
			record(username, "denied", action, ed->topic);
			return MOSQ_ERR_ACL_DENIED;
		}
		return MOSQ_ERR_SUCCESS;
	}
	const fw_device *device = fw_table_find(table, username);
	if (!device) {
		record(username, "unknown-identity", action, ed->topic);
		if (connected) queue_kick(username);
		return MOSQ_ERR_ACL_DENIED;
	}
	int serial_ok = digest_len && fw_serial_ok(device, digest, digest_len);
	if (!serial_ok) {
		record(username, "stale-certificate", action, ed->topic);
		if (connected) queue_kick(username);
		return MOSQ_ERR_ACL_DENIED;
	}
	if (fw_action == FW_PUBLISH && (long)ed->payloadlen > fw_table_max_payload(table)) {
		record(username, "payload-too-large", action, ed->topic);
		return MOSQ_ERR_ACL_DENIED;
	}
	if (!fw_check(table, device, fw_action, ed->topic)) {
		record(username, "denied", action, ed->topic);
		return MOSQ_ERR_ACL_DENIED;
	}
	return MOSQ_ERR_SUCCESS;
}

static int on_tick(int event, void *event_data, void *userdata)
{
	(void)event; (void)event_data; (void)userdata;
	long now = now_ns();
	if (now - last_stat_ns >= STAT_EVERY_NS) {
		last_stat_ns = now;
		load_table(false);
	}
	if (nkicks) run_kicks();
	if (now - last_flush_ns >= FLUSH_EVERY_NS) {
		last_flush_ns = now;
		flush_events();
	}
	return MOSQ_ERR_SUCCESS;
}

static int on_reload(int event, void *event_data, void *userdata)
{
	(void)event; (void)event_data; (void)userdata;
	load_table(false);
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	for (int i = 0; i < supported_version_count; i++)
		if (supported_versions[i] == 5) return 5;
	return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
                          struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	plugin_id = identifier;
	for (int i = 0; i < option_count; i++) {
		if (!strcmp(options[i].key, "table")) table_path = strdup(options[i].value);
		else if (!strcmp(options[i].key, "events")) events_path = strdup(options[i].value);
	}
	if (!table_path) {
		mosquitto_log_printf(MOSQ_LOG_ERR, "fleetward: plugin_opt_table is required");
		return MOSQ_ERR_INVAL;
	}
	load_table(true);
	int rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL, NULL);
	if (rc == MOSQ_ERR_SUCCESS) rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_TICK, on_tick, NULL, NULL);
	if (rc == MOSQ_ERR_SUCCESS) rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_RELOAD, on_reload, NULL, NULL);
	return rc;
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	(void)userdata; (void)options; (void)option_count;
	flush_events();
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_TICK, on_tick, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_RELOAD, on_reload, NULL);
	fw_table_free(table);
	table = NULL;
	for (size_t i = 0; i < nkicks; i++) free(kicks[i]);
	free(kicks);
	kicks = NULL;
	nkicks = capkicks = 0;
	free(table_path);
	free(events_path);
	return MOSQ_ERR_SUCCESS;
}
