/* fleetward ACL table evaluator. See fw_acl.h and fleetward/comms/policy.py.
 *
 * Table text, one record per line, fields separated by tabs:
 *   fwacl <format> <generation> <max_payload>
 *   I <username> <certs>               one of fleetward's own identities
 *                                      (certs as for D); the i lines that
 *                                      follow are its patterns
 *   i <code> <pattern>                 p publish, s subscribe (and receive);
 *                                      patterns are literals, '+' and '#'
 *   R <role name>                      roles are numbered in order from 0
 *   r <code> <template or command>     a rule of the last role; codes:
 *                                      p s c allow publish/subscribe/command,
 *                                      P S C deny publish/subscribe/command
 *   D <username> <tenant> <device> <product> <certs> <roles> <labels>
 *                                      certs: SHA-1 fingerprint of each
 *                                      current certificate (hex), comma
 *                                      separated;
 *                                      roles: indexes, comma separated;
 *                                      labels: key=value;key=value
 *   end                                the last line: a table without it
 *                                      is truncated and refused
 * Values never contain tabs, newlines, '/', '+' or '#' (the compiler only
 * writes values from the topic-safe alphabet and leaves others empty). An
 * empty line anywhere is refused.
 */
#include "fw_acl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { L_LIT, L_PLUS, L_HASH, L_DEVICE, L_TENANT, L_PRODUCT, L_LABEL };

typedef struct {
	int kind;
	const char *text; /* literal, or label key */
} fw_level;

typedef struct {
	fw_level *levels;
	int n;
} fw_template;

typedef struct {
	fw_template *items;
	int n, cap;
} fw_templates;

typedef struct {
	const char **items;
	int n, cap;
} fw_names;

typedef struct {
	fw_templates pub, sub, dpub, dsub;
	fw_names cmds, dcmds;
} fw_role;

struct fw_device {
	const char *username, *tenant, *device, *product;
	const char **label_keys, **label_values;
	int nlabels;
	unsigned char **serials;
	size_t *serial_lens;
	int nserials;
	int *roles;
	int nroles;
	fw_device *next;
};

struct fw_service {
	const char *username;
	unsigned char **certs;
	size_t *cert_lens;
	int ncerts;
	fw_templates pub, sub;
};

#define FW_MAX_SERVICES 32

struct fw_table {
	char *text;
	long generation, max_payload;
	fw_service *services[FW_MAX_SERVICES];
	size_t nservices;
	fw_role *roles;
	int nroles, caproles;
	fw_device **devices;
	size_t ndevices, capdevices;
	fw_device **buckets;
	size_t nbuckets;
	/* Every allocation made while loading, freed together. */
	void **allocs;
	size_t nallocs, capallocs;
};

static void *tmalloc(fw_table *t, size_t size)
{
	void *p = calloc(1, size ? size : 1);
	if (!p) return NULL;
	if (t->nallocs == t->capallocs) {
		size_t cap = t->capallocs ? t->capallocs * 2 : 64;
		void **a = realloc(t->allocs, cap * sizeof(void *));
		if (!a) { free(p); return NULL; }
		t->allocs = a;
		t->capallocs = cap;
	}
	t->allocs[t->nallocs++] = p;
	return p;
}

void fw_table_free(fw_table *t)
{
	if (!t) return;
	for (size_t i = 0; i < t->nallocs; i++) free(t->allocs[i]);
	free(t->allocs);
	free(t->roles);
	free(t->devices);
	free(t->buckets);
	free(t->text);
	free(t);
}

static int count_fields(const char *s, char sep)
{
	if (!*s) return 0;
	int n = 1;
	for (; *s; s++) if (*s == sep) n++;
	return n;
}

static int split(char *s, char sep, char **out, int max)
{
	int n = 0;
	if (!*s) return 0;
	while (n < max) {
		out[n++] = s;
		char *p = strchr(s, sep);
		if (!p) break;
		*p = '\0';
		s = p + 1;
	}
	return n;
}

static int parse_template(fw_table *t, char *text, fw_template *out)
{
	/* Count levels on a copy: the text stays intact for literals. */
	int n = 1;
	for (char *p = text; *p; p++) if (*p == '/') n++;
	out->levels = tmalloc(t, sizeof(fw_level) * (size_t)n);
	char *copy = tmalloc(t, strlen(text) + 1);
	if (!out->levels || !copy) return -1;
	strcpy(copy, text);
	char *parts[64];
	if (n > 64) return -1;
	n = split(copy, '/', parts, 64);
	out->n = n;
	for (int i = 0; i < n; i++) {
		fw_level *l = &out->levels[i];
		const char *s = parts[i];
		if (!strcmp(s, "+")) l->kind = L_PLUS;
		else if (!strcmp(s, "#")) l->kind = L_HASH;
		else if (!strcmp(s, "{device}")) l->kind = L_DEVICE;
		else if (!strcmp(s, "{tenant}")) l->kind = L_TENANT;
		else if (!strcmp(s, "{product}")) l->kind = L_PRODUCT;
		else if (!strncmp(s, "{label.", 7) && s[strlen(s) - 1] == '}') {
			l->kind = L_LABEL;
			parts[i][strlen(s) - 1] = '\0';
			l->text = s + 7;
		} else {
			l->kind = L_LIT;
			l->text = s;
		}
	}
	return 0;
}

static int push_template(fw_table *t, fw_templates *ts, char *text)
{
	if (ts->n == ts->cap) {
		int cap = ts->cap ? ts->cap * 2 : 4;
		fw_template *items = tmalloc(t, sizeof(fw_template) * (size_t)cap);
		if (!items) return -1;
		if (ts->n) memcpy(items, ts->items, sizeof(fw_template) * (size_t)ts->n);
		ts->items = items;
		ts->cap = cap;
	}
	return parse_template(t, text, &ts->items[ts->n++]);
}

static int push_name(fw_table *t, fw_names *ns, const char *name)
{
	if (ns->n == ns->cap) {
		int cap = ns->cap ? ns->cap * 2 : 4;
		const char **items = tmalloc(t, sizeof(char *) * (size_t)cap);
		if (!items) return -1;
		if (ns->n) memcpy(items, ns->items, sizeof(char *) * (size_t)ns->n);
		ns->items = items;
		ns->cap = cap;
	}
	ns->items[ns->n++] = name;
	return 0;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9') return c - '0';
	if (c >= 'a' && c <= 'f') return c - 'a' + 10;
	if (c >= 'A' && c <= 'F') return c - 'A' + 10;
	return -1;
}

/* Hex to bytes (certificate digests: fixed length, every byte significant). */
static int parse_serial(fw_table *t, const char *hex, unsigned char **out, size_t *len)
{
	size_t n = strlen(hex);
	if (n == 0 || n % 2) return -1;
	size_t bytes = (n + 1) / 2;
	unsigned char *b = tmalloc(t, bytes);
	if (!b) return -1;
	size_t i = 0, j = 0;
	if (n % 2) {
		int v = hexval(hex[0]);
		if (v < 0) return -1;
		b[j++] = (unsigned char)v;
		i = 1;
	}
	for (; i < n; i += 2) {
		int hi = hexval(hex[i]), lo = hexval(hex[i + 1]);
		if (hi < 0 || lo < 0) return -1;
		b[j++] = (unsigned char)(hi * 16 + lo);
	}
	*out = b;
	*len = j;
	return 0;
}

static unsigned long hash(const char *s)
{
	unsigned long h = 1469598103934665603UL;
	for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211UL;
	return h;
}

/* A comma-separated list of certificate fingerprints. */
static int parse_certs(fw_table *t, char *field, unsigned char ***out, size_t **lens, int *count)
{
	int n = count_fields(field, ',');
	char **items = tmalloc(t, sizeof(char *) * (size_t)(n ? n : 1));
	*out = tmalloc(t, sizeof(unsigned char *) * (size_t)(n ? n : 1));
	*lens = tmalloc(t, sizeof(size_t) * (size_t)(n ? n : 1));
	if (!items || !*out || !*lens) return -1;
	n = split(field, ',', items, n);
	for (int i = 0; i < n; i++)
		if (parse_serial(t, items[i], &(*out)[i], &(*lens)[i])) return -1;
	*count = n;
	return 0;
}

static int parse_service(fw_table *t, char **f, int nf)
{
	if (nf != 3 || !*f[1] || t->nservices == FW_MAX_SERVICES) return -1;
	for (size_t i = 0; i < t->nservices; i++)
		if (!strcmp(t->services[i]->username, f[1])) return -1;
	fw_service *s = tmalloc(t, sizeof(fw_service));
	if (!s) return -1;
	s->username = f[1];
	if (parse_certs(t, f[2], &s->certs, &s->cert_lens, &s->ncerts) || s->ncerts == 0) return -1;
	t->services[t->nservices++] = s;
	return 0;
}

/* A service pattern: literals, '+' and a final '#' under "fw/"; never a
 * variable (services span tenants, nothing binds one). */
static int push_pattern(fw_table *t, fw_templates *ts, char *text)
{
	if (push_template(t, ts, text)) return -1;
	const fw_template *p = &ts->items[ts->n - 1];
	if (p->n < 2 || p->levels[0].kind != L_LIT || strcmp(p->levels[0].text, "fw")) return -1;
	for (int i = 0; i < p->n; i++) {
		int k = p->levels[i].kind;
		if (k != L_LIT && k != L_PLUS && k != L_HASH) return -1;
		if (k == L_HASH && i != p->n - 1) return -1;
	}
	return 0;
}

static int parse_device(fw_table *t, char **f, int nf)
{
	if (nf != 8) return -1;
	fw_device *d = tmalloc(t, sizeof(fw_device));
	if (!d) return -1;
	d->username = f[1];
	d->tenant = f[2];
	d->device = f[3];
	d->product = f[4];
	/* Field lists are as long as they are: no fixed caps to overflow. */
	if (parse_certs(t, f[5], &d->serials, &d->serial_lens, &d->nserials)) return -1;
	int n = count_fields(f[6], ',');
	char **items = tmalloc(t, sizeof(char *) * (size_t)(n ? n : 1));
	d->roles = tmalloc(t, sizeof(int) * (size_t)(n ? n : 1));
	if (!items || !d->roles) return -1;
	n = split(f[6], ',', items, n);
	for (int i = 0; i < n; i++) {
		char *end;
		long r = strtol(items[i], &end, 10);
		if (!*items[i] || *end || r < 0 || r >= t->nroles) return -1;
		d->roles[i] = (int)r;
	}
	d->nroles = n;
	n = count_fields(f[7], ';');
	items = tmalloc(t, sizeof(char *) * (size_t)(n ? n : 1));
	d->label_keys = tmalloc(t, sizeof(char *) * (size_t)(n ? n : 1));
	d->label_values = tmalloc(t, sizeof(char *) * (size_t)(n ? n : 1));
	if (!items || !d->label_keys || !d->label_values) return -1;
	n = split(f[7], ';', items, n);
	for (int i = 0; i < n; i++) {
		char *eq = strchr(items[i], '=');
		if (!eq) return -1;
		*eq = '\0';
		d->label_keys[i] = items[i];
		d->label_values[i] = eq + 1;
	}
	d->nlabels = n;
	if (t->ndevices == t->capdevices) {
		size_t cap = t->capdevices ? t->capdevices * 2 : 256;
		fw_device **a = realloc(t->devices, cap * sizeof(fw_device *));
		if (!a) return -1;
		t->devices = a;
		t->capdevices = cap;
	}
	t->devices[t->ndevices++] = d;
	return 0;
}

fw_table *fw_table_load(const char *text, size_t len, char *err, size_t errlen)
{
	fw_table *t = calloc(1, sizeof(fw_table));
	if (!t) { snprintf(err, errlen, "out of memory"); return NULL; }
	t->text = malloc(len + 1);
	if (!t->text) { snprintf(err, errlen, "out of memory"); fw_table_free(t); return NULL; }
	memcpy(t->text, text, len);
	t->text[len] = '\0';
	char *line = t->text;
	int lineno = 0, header = 0, ended = 0;
	while (line && *line) {
		char *next = strchr(line, '\n');
		if (next) *next++ = '\0';
		lineno++;
		char *f[9];
		int nf = split(line, '\t', f, 9);
		int bad = nf == 0 || ended;
		if (!bad && !header) {
			bad = strcmp(f[0], "fwacl") || nf != 4 || strcmp(f[1], "3");
			if (!bad) {
				t->generation = strtol(f[2], NULL, 10);
				t->max_payload = strtol(f[3], NULL, 10);
				header = 1;
			}
		} else if (!bad && !strcmp(f[0], "end") && nf == 1) {
			ended = 1;
		} else if (!bad && !strcmp(f[0], "R") && nf == 2) {
			if (t->nroles == t->caproles) {
				int cap = t->caproles ? t->caproles * 2 : 16;
				fw_role *a = realloc(t->roles, sizeof(fw_role) * (size_t)cap);
				bad = !a;
				if (a) { t->roles = a; t->caproles = cap; }
			}
			if (!bad) memset(&t->roles[t->nroles++], 0, sizeof(fw_role));
		} else if (!bad && !strcmp(f[0], "r") && nf == 3 && t->nroles > 0 && strlen(f[1]) == 1) {
			fw_role *r = &t->roles[t->nroles - 1];
			switch (f[1][0]) {
			case 'p': bad = push_template(t, &r->pub, f[2]); break;
			case 's': bad = push_template(t, &r->sub, f[2]); break;
			case 'P': bad = push_template(t, &r->dpub, f[2]); break;
			case 'S': bad = push_template(t, &r->dsub, f[2]); break;
			case 'c': bad = push_name(t, &r->cmds, f[2]); break;
			case 'C': bad = push_name(t, &r->dcmds, f[2]); break;
			default: bad = 1;
			}
		} else if (!bad && !strcmp(f[0], "I") && t->nroles == 0) {
			bad = parse_service(t, f, nf);
		} else if (!bad && !strcmp(f[0], "i") && nf == 3 && t->nservices > 0 && t->nroles == 0 &&
		           strlen(f[1]) == 1) {
			fw_service *sv = t->services[t->nservices - 1];
			switch (f[1][0]) {
			case 'p': bad = push_pattern(t, &sv->pub, f[2]); break;
			case 's': bad = push_pattern(t, &sv->sub, f[2]); break;
			default: bad = 1;
			}
		} else if (!bad && !strcmp(f[0], "D")) {
			bad = parse_device(t, f, nf);
		} else {
			bad = 1;
		}
		if (bad) {
			snprintf(err, errlen, "bad table line %d", lineno);
			fw_table_free(t);
			return NULL;
		}
		line = next;
	}
	if (!header || !ended) {
		snprintf(err, errlen, "table has no %s (truncated?)", header ? "end line" : "header");
		fw_table_free(t);
		return NULL;
	}
	size_t nb = 16;
	while (nb < t->ndevices * 2) nb *= 2;
	t->buckets = calloc(nb, sizeof(fw_device *));
	if (!t->buckets) { snprintf(err, errlen, "out of memory"); fw_table_free(t); return NULL; }
	t->nbuckets = nb;
	for (size_t i = 0; i < t->ndevices; i++) {
		fw_device *d = t->devices[i];
		size_t b = hash(d->username) & (nb - 1);
		d->next = t->buckets[b];
		t->buckets[b] = d;
	}
	return t;
}

const fw_device *fw_table_find(const fw_table *t, const char *username)
{
	if (!t || !username) return NULL;
	for (fw_device *d = t->buckets[hash(username) & (t->nbuckets - 1)]; d; d = d->next)
		if (!strcmp(d->username, username)) return d;
	return NULL;
}

long fw_table_max_payload(const fw_table *t) { return t->max_payload; }
long fw_table_generation(const fw_table *t) { return t->generation; }
size_t fw_table_count(const fw_table *t) { return t->ndevices; }
const fw_device *fw_table_at(const fw_table *t, size_t i) { return t->devices[i]; }
const char *fw_device_username(const fw_device *d) { return d->username; }

int fw_serial_ok(const fw_device *d, const unsigned char *serial, size_t len)
{
	for (int i = 0; i < d->nserials; i++)
		if (d->serial_lens[i] == len && !memcmp(d->serials[i], serial, len)) return 1;
	return 0;
}

int fw_serials_kept(const fw_device *old_device, const fw_device *new_device)
{
	for (int i = 0; i < old_device->nserials; i++)
		if (!fw_serial_ok(new_device, old_device->serials[i], old_device->serial_lens[i]))
			return 0;
	return 1;
}

static const char *bind(const fw_device *d, const fw_level *l)
{
	switch (l->kind) {
	case L_LIT: return l->text;
	case L_DEVICE: return d->device;
	case L_TENANT: return d->tenant;
	case L_PRODUCT: return *d->product ? d->product : NULL;
	case L_LABEL:
		for (int i = 0; i < d->nlabels; i++)
			if (!strcmp(d->label_keys[i], l->text))
				return *d->label_values[i] ? d->label_values[i] : NULL;
		return NULL;
	}
	return NULL;
}

static int matches(const fw_device *d, const fw_template *t, char **topic, int n)
{
	for (int i = 0; i < t->n; i++) {
		const fw_level *l = &t->levels[i];
		if (l->kind == L_HASH) return 1;
		if (i >= n) return 0;
		if (l->kind == L_PLUS) continue;
		const char *v = bind(d, l);
		if (!v || strcmp(v, topic[i])) return 0;
	}
	return n == t->n;
}

static int covers(const fw_device *d, const fw_template *t, char **filt, int n)
{
	for (int i = 0; i < t->n; i++) {
		const fw_level *l = &t->levels[i];
		if (l->kind == L_HASH) return 1;
		if (i >= n) return 0;
		if (!strcmp(filt[i], "#")) return 0;
		if (l->kind == L_PLUS) continue;
		const char *v = bind(d, l);
		if (!strcmp(filt[i], "+") || !v || strcmp(v, filt[i])) return 0;
	}
	return n == t->n;
}

static int has_name(const fw_names *ns, const char *name)
{
	for (int i = 0; i < ns->n; i++)
		if (!strcmp(ns->items[i], name)) return 1;
	return 0;
}

static int decide_command(const fw_table *t, const fw_device *d, const char *name)
{
	for (int i = 0; i < d->nroles; i++)
		if (has_name(&t->roles[d->roles[i]].dcmds, name)) return 0;
	for (int i = 0; i < d->nroles; i++)
		if (has_name(&t->roles[d->roles[i]].cmds, name)) return 1;
	return 0;
}

static int evaluate(const fw_table *t, const fw_device *d, int action, char **lv, int n)
{
	int cmd_prefix = n == 5 && !strcmp(lv[0], "fw") && !strcmp(lv[1], d->tenant) &&
	                 !strcmp(lv[2], d->device) && !strcmp(lv[3], "cmd");
	int own_cmd = cmd_prefix && strcmp(lv[4], "+") && strcmp(lv[4], "#");
	if (action == FW_RECEIVE && own_cmd) return decide_command(t, d, lv[4]);
	if (action == FW_SUBSCRIBE && cmd_prefix && !strcmp(lv[4], "+")) {
		for (int i = 0; i < d->nroles; i++)
			if (t->roles[d->roles[i]].cmds.n) return 1;
		return 0;
	}
	if (action == FW_SUBSCRIBE && own_cmd) return decide_command(t, d, lv[4]);
	int sub = action != FW_PUBLISH;
	for (int i = 0; i < d->nroles; i++) {
		const fw_templates *ts = sub ? &t->roles[d->roles[i]].dsub : &t->roles[d->roles[i]].dpub;
		for (int j = 0; j < ts->n; j++)
			if (action == FW_SUBSCRIBE ? covers(d, &ts->items[j], lv, n)
			                           : matches(d, &ts->items[j], lv, n))
				return 0;
	}
	for (int i = 0; i < d->nroles; i++) {
		const fw_templates *ts = sub ? &t->roles[d->roles[i]].sub : &t->roles[d->roles[i]].pub;
		for (int j = 0; j < ts->n; j++)
			if (action == FW_SUBSCRIBE ? covers(d, &ts->items[j], lv, n)
			                           : matches(d, &ts->items[j], lv, n))
				return 1;
	}
	return 0;
}

int fw_check(const fw_table *t, const fw_device *d, int action, const char *topic)
{
	if (!t || !d || !topic) return 0;
	size_t len = strlen(topic);
	char stackbuf[512];
	char *copy = len < sizeof(stackbuf) ? stackbuf : malloc(len + 1);
	if (!copy) return 0;
	memcpy(copy, topic, len + 1);
	char *lv[64];
	int n = 1;
	lv[0] = copy;
	for (char *p = copy; *p; p++) {
		if (*p == '/') {
			if (n == 64) { n = -1; break; }
			*p = '\0';
			lv[n++] = p + 1;
		}
	}
	/* No policy template has more than 16 levels; a deeper topic can still
	 * match a trailing '#', so only refuse what the array cannot hold. */
	int result = n < 0 ? 0 : evaluate(t, d, action, lv, n);
	if (copy != stackbuf) free(copy);
	return result;
}

int fw_check_text(const fw_table *t, const char *username, int action, const char *topic)
{
	return fw_check(t, fw_table_find(t, username), action, topic);
}

const fw_service *fw_table_find_service(const fw_table *t, const char *username)
{
	if (!t || !username) return NULL;
	for (size_t i = 0; i < t->nservices; i++)
		if (!strcmp(t->services[i]->username, username)) return t->services[i];
	return NULL;
}

int fw_service_cert_ok(const fw_service *s, const unsigned char *digest, size_t len)
{
	for (int i = 0; s && i < s->ncerts; i++)
		if (s->cert_lens[i] == len && !memcmp(s->certs[i], digest, len)) return 1;
	return 0;
}

int fw_service_certs_kept(const fw_service *old_service, const fw_service *new_service)
{
	for (int i = 0; i < old_service->ncerts; i++)
		if (!fw_service_cert_ok(new_service, old_service->certs[i], old_service->cert_lens[i]))
			return 0;
	return 1;
}

size_t fw_table_service_count(const fw_table *t) { return t->nservices; }
const fw_service *fw_table_service_at(const fw_table *t, size_t i) { return t->services[i]; }
const char *fw_service_username(const fw_service *s) { return s->username; }

static int service_evaluate(const fw_service *s, int action, char **lv, int n)
{
	if (action == FW_SUBSCRIBE) {
		/* An MQTT 5 shared subscription: $share/<group>/<filter>. */
		if (!strcmp(lv[0], "$share")) {
			if (n < 3 || !strcmp(lv[1], "+") || !strcmp(lv[1], "#")) return 0;
			lv += 2;
			n -= 2;
		}
		for (int j = 0; j < s->sub.n; j++)
			if (covers(NULL, &s->sub.items[j], lv, n)) return 1;
		return 0;
	}
	const fw_templates *ts = action == FW_PUBLISH ? &s->pub : &s->sub;
	for (int j = 0; j < ts->n; j++)
		if (matches(NULL, &ts->items[j], lv, n)) return 1;
	return 0;
}

int fw_service_check(const fw_service *s, int action, const char *topic)
{
	if (!s || !topic) return 0;
	size_t len = strlen(topic);
	char stackbuf[512];
	char *copy = len < sizeof(stackbuf) ? stackbuf : malloc(len + 1);
	if (!copy) return 0;
	memcpy(copy, topic, len + 1);
	char *lv[64];
	int n = 1;
	lv[0] = copy;
	for (char *p = copy; *p; p++) {
		if (*p == '/') {
			if (n == 64) { n = -1; break; }
			*p = '\0';
			lv[n++] = p + 1;
		}
	}
	int result = n < 0 ? 0 : service_evaluate(s, action, lv, n);
	if (copy != stackbuf) free(copy);
	return result;
}

int fw_service_check_text(const fw_table *t, const char *username, int action, const char *topic)
{
	return fw_service_check(fw_table_find_service(t, username), action, topic);
}
