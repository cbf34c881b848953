/* Shared helpers for the libFuzzer harnesses in tests/fuzz (clang only).
 * Inputs are split into fields at NUL bytes, so every field can still
 * carry CR, LF and any other byte the parser under test must refuse. */
#ifndef SP_FUZZ_H
#define SP_FUZZ_H
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int	 LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int	 LLVMFuzzerInitialize(int *argc, char ***argv);

/* A violated invariant is a finding like any crash: abort() so libFuzzer
 * keeps the input. */
#define FZ_CHECK(c) do {						\
	if (!(c)) {							\
		fprintf(stderr, "fuzz invariant failed: %s (%s:%d)\n",	\
		    #c, __FILE__, __LINE__);				\
		abort();						\
	}								\
} while (0)

struct fz {
	const uint8_t	*p;
	size_t		 n;
};

static inline void
fz_init(struct fz *f, const uint8_t *d, size_t n)
{
	f->p = d;
	f->n = n;
}

/* Next byte, 0 once the input is used up. */
static inline unsigned
fz_byte(struct fz *f)
{
	if (f->n == 0)
		return 0;
	f->n--;
	return *f->p++;
}

/* Next NUL-terminated field as a malloc'd string (the rest when there is
 * no NUL left). Never NULL: allocation failure aborts. */
static inline char *
fz_field(struct fz *f, size_t *lenp)
{
	const uint8_t	*z = memchr(f->p, 0, f->n);
	size_t		 len = z != NULL ? (size_t)(z - f->p) : f->n;
	char		*s = malloc(len + 1);

	FZ_CHECK(s != NULL);
	memcpy(s, f->p, len);
	s[len] = '\0';
	f->p += len;
	f->n -= len;
	if (z != NULL) {
		f->p++;
		f->n--;
	}
	if (lenp != NULL)
		*lenp = len;
	return s;
}

/* All remaining bytes (NULs included) plus a terminating NUL. */
static inline char *
fz_rest(struct fz *f, size_t *lenp)
{
	char	*s = malloc(f->n + 1);

	FZ_CHECK(s != NULL);
	if (f->n > 0)
		memcpy(s, f->p, f->n);
	s[f->n] = '\0';
	if (lenp != NULL)
		*lenp = f->n;
	f->p += f->n;
	f->n = 0;
	return s;
}

#endif
