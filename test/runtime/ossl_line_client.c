/*
 * A minimal OpenSSL client for test/runtime/openssl-lines.test.ts, the same
 * source for every OpenSSL line (1.1, 3.0, 3.5, 3.6).
 *
 * It dlopen()s libssl/libcrypto by name instead of linking them: one binary,
 * built once with the host's gcc and no OpenSSL headers, then runs against
 * each line. The test runs it inside a root that holds the line's libraries
 * (chroot), so they are the only libssl the loader can find, and kloak finds
 * them where it finds a container's: in the process's root.
 *
 *   ossl_line_client LIBSSL LIBCRYPTO IP PORT SNI CAFILE
 *
 * Connects to IP:PORT with SSL_set_fd (the library's socket BIO), sets the
 * SNI and verifies the server's certificate for that name, then sends one
 * HTTP/1.1 POST whose X-Api-Key header and body carry the value of the
 * environment variable API_TOKEN (a placeholder under kloak), and reads the
 * reply. Prints VERSION=<OpenSSL_version>, STATUS=<code>, and
 * APP_UNCHANGED=yes when the request buffer still holds what the app put
 * there after SSL_write returned (kloak restores the placeholder).
 */
#include <arpa/inet.h>
#include <dlfcn.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define SSL_CTRL_SET_TLSEXT_HOSTNAME 55
#define TLSEXT_NAMETYPE_host_name 0
#define SSL_VERIFY_PEER 1

static void *sym(void *lib, const char *name)
{
	void *p = dlsym(lib, name);

	if (!p) {
		fprintf(stderr, "missing %s: %s\n", name, dlerror());
		exit(2);
	}
	return p;
}

int main(int argc, char **argv)
{
	void *ssl_lib, *crypto_lib, *ctx, *ssl;
	const char *token = getenv("API_TOKEN");
	char req[4096], copy[4096], reply[4096];
	struct sockaddr_in sa = { .sin_family = AF_INET };
	int fd, n, len, got = 0;

	if (argc != 7 || !token) {
		fprintf(stderr, "usage: API_TOKEN=... %s LIBSSL LIBCRYPTO IP PORT SNI CAFILE\n", argv[0]);
		return 2;
	}
	crypto_lib = dlopen(argv[2], RTLD_NOW | RTLD_GLOBAL);
	ssl_lib = crypto_lib ? dlopen(argv[1], RTLD_NOW) : NULL;
	if (!ssl_lib) {
		fprintf(stderr, "dlopen: %s\n", dlerror());
		return 2;
	}
	const char *(*OpenSSL_version)(int) = sym(crypto_lib, "OpenSSL_version");
	void (*ERR_print_errors_fp)(FILE *) = sym(crypto_lib, "ERR_print_errors_fp");
	const void *(*TLS_client_method)(void) = sym(ssl_lib, "TLS_client_method");
	void *(*SSL_CTX_new)(const void *) = sym(ssl_lib, "SSL_CTX_new");
	int (*SSL_CTX_load_verify_locations)(void *, const char *, const char *) = sym(ssl_lib, "SSL_CTX_load_verify_locations");
	void (*SSL_CTX_set_verify)(void *, int, void *) = sym(ssl_lib, "SSL_CTX_set_verify");
	void *(*SSL_new)(void *) = sym(ssl_lib, "SSL_new");
	int (*SSL_set_fd)(void *, int) = sym(ssl_lib, "SSL_set_fd");
	long (*SSL_ctrl)(void *, int, long, void *) = sym(ssl_lib, "SSL_ctrl");
	int (*SSL_set1_host)(void *, const char *) = sym(ssl_lib, "SSL_set1_host");
	int (*SSL_connect)(void *) = sym(ssl_lib, "SSL_connect");
	int (*SSL_write)(void *, const void *, int) = sym(ssl_lib, "SSL_write");
	int (*SSL_read)(void *, void *, int) = sym(ssl_lib, "SSL_read");
	int (*SSL_shutdown)(void *) = sym(ssl_lib, "SSL_shutdown");
	void (*SSL_free)(void *) = sym(ssl_lib, "SSL_free");

	printf("VERSION=%s\n", OpenSSL_version(0));
	sa.sin_port = htons(atoi(argv[4]));
	if (inet_pton(AF_INET, argv[3], &sa.sin_addr) != 1)
		return 2;
	fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa))) {
		perror("connect");
		return 1;
	}
	ctx = SSL_CTX_new(TLS_client_method());
	if (!ctx || SSL_CTX_load_verify_locations(ctx, argv[6], NULL) != 1)
		goto tls_error;
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	ssl = SSL_new(ctx);
	if (!ssl || SSL_set_fd(ssl, fd) != 1 ||
	    SSL_ctrl(ssl, SSL_CTRL_SET_TLSEXT_HOSTNAME, TLSEXT_NAMETYPE_host_name, argv[5]) != 1 ||
	    SSL_set1_host(ssl, argv[5]) != 1 || SSL_connect(ssl) != 1)
		goto tls_error;
	len = snprintf(req, sizeof(req),
		       "POST /line HTTP/1.1\r\nHost: %s\r\nX-Api-Key: %s\r\nContent-Length: %zu\r\nConnection: close\r\n\r\nk=%s",
		       argv[5], token, strlen(token) + 2, token);
	if (len <= 0 || len >= (int)sizeof(req))
		return 2;
	memcpy(copy, req, len);
	if (SSL_write(ssl, req, len) != len)
		goto tls_error;
	printf("APP_UNCHANGED=%s\n", memcmp(copy, req, len) == 0 ? "yes" : "no");
	while (got < (int)sizeof(reply) - 1 && (n = SSL_read(ssl, reply + got, sizeof(reply) - 1 - got)) > 0)
		got += n;
	reply[got] = 0;
	printf("STATUS=%.3s\n", strncmp(reply, "HTTP/1.1 ", 9) == 0 ? reply + 9 : "none");
	SSL_shutdown(ssl);
	SSL_free(ssl);
	close(fd);
	return 0;
tls_error:
	fprintf(stderr, "TLS error\n");
	ERR_print_errors_fp(stderr);
	return 1;
}
