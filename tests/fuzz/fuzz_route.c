/* Request routing (core/route.h): route_resolve() on a raw target,
 * outside or inside an intercepted tunnel whose CONNECT host and port
 * come from the input, against the default gateway table plus the
 * unit tests' extra prefixes; then route_to_tls() and route_clear().
 * Input: flags (bit 0: in a tunnel, bit 1: its host is IPv6), two port
 * bytes, the tunnel host, NUL, the raw target. */
#include "fuzz.h"
#include "core/gateway.h"
#include "core/route.h"

static struct gateway	gw;

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	char	err[256];

	FZ_CHECK(gateway_defaults(&gw) == 0);
	FZ_CHECK(gateway_set(&gw, "/local/", "http://127.0.0.1:11434/v1/",
	    err, sizeof(err)) == 0);
	FZ_CHECK(gateway_set(&gw, "/v6/", "http://[::1]:8080/base/", err,
	    sizeof(err)) == 0);
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fz		 f;
	struct route_icpt	 icpt;
	struct route		 r;
	enum perr		 e;
	unsigned		 flags, hi, lo;
	char			*host, *raw, err[512];

	fz_init(&f, data, size);
	flags = fz_byte(&f);
	hi = fz_byte(&f);
	lo = fz_byte(&f);
	host = fz_field(&f, NULL);
	raw = fz_rest(&f, NULL);
	icpt.host = host;
	/* A tunnel's port comes from a parsed CONNECT: 1-65535. */
	icpt.port = (int)(hi << 8 | lo) != 0 ? (int)(hi << 8 | lo) : 443;
	icpt.ipv6 = (flags & 2) != 0;

	memset(&r, 0, sizeof(r));
	if (route_resolve(raw, (flags & 1) ? &icpt : NULL, &gw, &r, &e, err,
	    sizeof(err)) == 0) {
		FZ_CHECK(strcmp(route_mode_name(r.mode), "unknown") != 0);
		if (r.mode != ROUTE_MODE_LOCAL) {
			FZ_CHECK(r.url != NULL && r.host != NULL);
			FZ_CHECK(r.path != NULL && r.path[0] == '/');
			FZ_CHECK(strchr(r.path, '?') == NULL);
			FZ_CHECK(r.port >= 1 && r.port <= 65535);
			FZ_CHECK(strcmp(r.scheme, "http") == 0 ||
			    strcmp(r.scheme, "https") == 0);
			if (route_to_tls(&r) == 0) {
				FZ_CHECK(strcmp(r.scheme, "https") == 0);
				FZ_CHECK(r.port == 443);
				FZ_CHECK(strncmp(r.url, "https://", 8) == 0);
			}
		}
	} else {
		FZ_CHECK(e >= 0 && e < PERR__COUNT);
	}
	route_clear(&r);
	route_clear(&r);
	free(host);
	free(raw);
	return 0;
}
