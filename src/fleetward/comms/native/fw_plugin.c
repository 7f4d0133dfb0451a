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
 *    to an events file that fleetward ingests; past a threshold per
 *    identity and window, only as counts (see record()).
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

static mosquitto_plugin_id_t *plugin_id;
static char *table_path, *events_path;
static fw_table *table;
static struct stat table_stat;
static long last_stat_ns, last_flush_ns;
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

/* Denial bookkeeping: O(1) per denial, bounded rows per identity.
 *
 * Denials are kept per identity in an open-addressing hash table keyed by
 * username (FNV-1a), so a denial costs one hash and at most a few probes,
 * never a scan of every pending entry. Within a window of
 * AGG_WINDOW_NS, an identity's first DETAIL_PER_WINDOW distinct
 * (kind, action, topic) entries are written as today (one line per entry
 * per flush, with its count); past that, its denials are only counted per
 * (kind, action) and written once, when the window closes, as one line per
 * (kind, action) with an empty topic (no MQTT topic is empty). So one
 * device flooding distinct forbidden topics writes at most
 * DETAIL_PER_WINDOW + N_KINDS * N_ACTIONS lines per window, however fast
 * it publishes. More identities than MAX_IDENTITIES in one window are
 * counted in the overflow line, not kept. */
#define MAX_IDENTITIES 4096           /* identities tracked per window; more are counted as overflow */
#define ID_SLOTS (2 * MAX_IDENTITIES) /* hash slots: load factor at most 1/2 */
#define DETAIL_PER_WINDOW 8           /* distinct detailed entries per identity per window */
#define AGG_WINDOW_NS 60000000000L    /* 60 s: past the threshold, one line per kind per window */
#define TOPIC_KEPT 256                /* topics are logged for evidence; bound what one line carries */

static const char *const KINDS[] = {"denied", "stale-certificate", "payload-too-large", "unknown-identity"};
#define N_KINDS (sizeof(KINDS) / sizeof(KINDS[0]))
static const char *const ACTIONS[] = {"publish", "receive", "subscribe"};
#define N_ACTIONS (sizeof(ACTIONS) / sizeof(ACTIONS[0]))

typedef struct {
	unsigned char kind, action;
	char *topic;
	unsigned long count;
} detail_entry;

typedef struct {
	char *username; /* NULL: a free slot */
	unsigned used;  /* detailed entries started in this window */
	unsigned pending; /* of which not yet flushed (the first `pending` of detail[]) */
	detail_entry detail[DETAIL_PER_WINDOW];
	unsigned long more[N_KINDS][N_ACTIONS]; /* denials past the threshold */
} id_entry;

static id_entry *ids; /* ID_SLOTS entries, allocated on first use */
static size_t nids;
static long window_start_ns;
static unsigned long agg_overflow;

static size_t index_of(const char *const *names, size_t n, const char *name)
{
	for (size_t i = 0; i < n; i++)
		if (!strcmp(names[i], name)) return i;
	return n;
}

static uint64_t fnv1a(const char *s)
{
	uint64_t h = 1469598103934665603ULL;
	for (; *s; s++) { h ^= (unsigned char)*s; h *= 1099511628211ULL; }
	return h;
}

/* The identity's slot, created if needed; NULL when the table is full. */
static id_entry *identity_slot(const char *username)
{
	if (!ids) {
		ids = calloc(ID_SLOTS, sizeof(id_entry));
		if (!ids) return NULL;
	}
	size_t i = (size_t)(fnv1a(username) % ID_SLOTS);
	for (;;) {
		id_entry *e = &ids[i];
		if (!e->username) break;
		if (!strcmp(e->username, username)) return e;
		i = (i + 1) % ID_SLOTS; /* at most half the slots are used: a free one is near */
	}
	if (nids == MAX_IDENTITIES) return NULL;
	char *copy = strdup(username);
	if (!copy) return NULL;
	ids[i].username = copy;
	nids++;
	return &ids[i];
}

static void record(const char *username, const char *kind, const char *action, const char *topic)
{
	if (!events_path) return;
	size_t k = index_of(KINDS, N_KINDS, kind), a = index_of(ACTIONS, N_ACTIONS, action);
	id_entry *e = (k < N_KINDS && a < N_ACTIONS) ? identity_slot(username) : NULL;
	if (!e) { agg_overflow++; return; }
	/* Entries not flushed yet: at most DETAIL_PER_WINDOW, a bounded scan. */
	for (unsigned i = 0; i < e->pending; i++) {
		detail_entry *d = &e->detail[i];
		if (d->kind == k && d->action == a && !strncmp(d->topic, topic, TOPIC_KEPT)) {
			d->count++;
			return;
		}
	}
	if (e->used >= DETAIL_PER_WINDOW) {
		e->more[k][a]++; /* past the threshold: counted, written when the window closes */
		return;
	}
	detail_entry *d = &e->detail[e->pending];
	d->topic = strndup(topic, TOPIC_KEPT);
	if (!d->topic) { agg_overflow++; return; }
	d->kind = (unsigned char)k;
	d->action = (unsigned char)a;
	d->count = 1;
	e->pending++;
	e->used++;
}

static void write_line(FILE *f, long now, const char *username, size_t k, size_t a, const char *topic,
                       unsigned long count)
{
	fprintf(f, "%ld\t%s\t%s\t%s\t", now, username, KINDS[k], ACTIONS[a]);
	/* Topics may hold tabs or newlines; escape both for the line format. */
	for (const char *p = topic; *p; p++) {
		if (*p == '\t' || *p == '\n' || *p == '\r' || *p == '\\') fprintf(f, "\\x%02x", (unsigned char)*p);
		else fputc(*p, f);
	}
	fprintf(f, "\t%lu\n", count);
}

/* Write what is pending; when the window closed (or `final`), also the
 * counts past the threshold, and start a new window. */
static void flush_events(bool final)
{
	long mono = now_ns();
	bool close_window = final || mono - window_start_ns >= AGG_WINDOW_NS;
	if (!events_path) return;
	if (nids == 0 && agg_overflow == 0) {
		if (close_window) window_start_ns = mono;
		return;
	}
	int fd = open(events_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
	FILE *f = fd >= 0 ? fdopen(fd, "a") : NULL;
	long now = (long)time(NULL);
	for (size_t s = 0; ids && s < ID_SLOTS; s++) {
		id_entry *e = &ids[s];
		if (!e->username) continue;
		for (unsigned i = 0; i < e->pending; i++) {
			detail_entry *d = &e->detail[i];
			if (f) write_line(f, now, e->username, d->kind, d->action, d->topic, d->count);
			free(d->topic);
			d->topic = NULL;
		}
		e->pending = 0;
		if (!close_window) continue;
		for (size_t k = 0; k < N_KINDS; k++)
			for (size_t a = 0; a < N_ACTIONS; a++)
				if (e->more[k][a] && f) write_line(f, now, e->username, k, a, "", e->more[k][a]);
		free(e->username);
		memset(e, 0, sizeof(*e));
	}
	if (close_window) {
		nids = 0;
		window_start_ns = mono;
	}
	if (f && agg_overflow) fprintf(f, "%ld\t\toverflow\t\t\t%lu\n", now, agg_overflow);
	if (f) fclose(f);
	else if (fd >= 0) close(fd);
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
		flush_events(false);
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
	window_start_ns = now_ns();
	load_table(true);
	int rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL, NULL);
	if (rc == MOSQ_ERR_SUCCESS) rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_TICK, on_tick, NULL, NULL);
	if (rc == MOSQ_ERR_SUCCESS) rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_RELOAD, on_reload, NULL, NULL);
	return rc;
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	(void)userdata; (void)options; (void)option_count;
	flush_events(true);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_TICK, on_tick, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_RELOAD, on_reload, NULL);
	fw_table_free(table);
	table = NULL;
	for (size_t i = 0; i < nkicks; i++) free(kicks[i]);
	free(kicks);
	kicks = NULL;
	nkicks = capkicks = 0;
	free(ids); /* flush_events(true) freed every username */
	ids = NULL;
	free(table_path);
	free(events_path);
	return MOSQ_ERR_SUCCESS;
}
