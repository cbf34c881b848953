/*
 * secmem: page-backed memory for secrets.
 *
 * Layout of a block: a small header holding the mapping length, then the
 * caller's bytes.  Keeping the length in the block lets
 * secmem_strfree() release a string without the caller tracking its size,
 * and lets secmem_free() wipe the whole mapping even if n is understated.
 */
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>

#include <errno.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "cred/secmem.h"

/* Enough to keep the payload aligned for any scalar type. */
#define SECMEM_HDR	16

struct secmem_hdr {
	size_t	maplen;
};

static atomic_bool secmem_lockfail;

/* mmap, mlock and munmap for every assertion cost more than the
 * signature (munmap shoots down TLB entries on every core): single-page
 * blocks are wiped and kept, locked, in a small per-thread cache. */
#define SECMEM_CACHE	16
static _Thread_local void	*secmem_cache[SECMEM_CACHE];
static _Thread_local int	 secmem_ncache;

static size_t
secmem_pagesize(void)
{
	long	ps = sysconf(_SC_PAGESIZE);

	return ps > 0 ? (size_t)ps : 4096;
}

void *
secmem_alloc(size_t n)
{
	struct secmem_hdr	*h;
	size_t			 ps, maplen;
	void			*base;

	if (n == 0 || n > SIZE_MAX / 2)
		return NULL;
	ps = secmem_pagesize();
	maplen = (n + SECMEM_HDR + ps - 1) / ps * ps;
	if (maplen == ps && secmem_ncache > 0) {
		h = secmem_cache[--secmem_ncache];	/* wiped when cached */
		h->maplen = maplen;
		return (unsigned char *)h + SECMEM_HDR;
	}

	/* Anonymous mappings are zero-filled by the kernel. */
	base = mmap(NULL, maplen, PROT_READ | PROT_WRITE,
	    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (base == MAP_FAILED)
		return NULL;
	if (mlock(base, maplen) == -1)
		atomic_store(&secmem_lockfail, true);
#ifdef MADV_DONTDUMP
	(void)madvise(base, maplen, MADV_DONTDUMP);
#endif
	h = base;
	h->maplen = maplen;
	return (unsigned char *)base + SECMEM_HDR;
}

void
secmem_free(void *p, size_t n)
{
	struct secmem_hdr	*h;
	size_t			 maplen;

	(void)n;	/* the header knows the real extent */
	if (p == NULL)
		return;
	h = (struct secmem_hdr *)(void *)((unsigned char *)p - SECMEM_HDR);
	maplen = h->maplen;
	OPENSSL_cleanse(h, maplen);
	if (maplen == secmem_pagesize() && secmem_ncache < SECMEM_CACHE) {
		secmem_cache[secmem_ncache++] = h;
		return;
	}
	/* munlock fails harmlessly if the mlock had failed. */
	(void)munlock(h, maplen);
	(void)munmap(h, maplen);
}

char *
secmem_strndup(const char *s, size_t len)
{
	char	*d;

	if (s == NULL || len == SIZE_MAX)
		return NULL;
	if ((d = secmem_alloc(len + 1)) == NULL)
		return NULL;
	memcpy(d, s, len);
	d[len] = '\0';
	return d;
}

char *
secmem_strdup(const char *s)
{
	if (s == NULL)
		return NULL;
	return secmem_strndup(s, strlen(s));
}

void
secmem_strfree(char *s)
{
	secmem_free(s, 0);
}

bool
secmem_lock_failed(void)
{
	return atomic_load(&secmem_lockfail);
}

int
secmem_harden_process(char *err, size_t errlen)
{
	struct rlimit	rl = { 0, 0 };

	if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == -1) {
		snprintf(err, errlen, "prctl(PR_SET_DUMPABLE): %s",
		    strerror(errno));
		return -1;
	}
	if (setrlimit(RLIMIT_CORE, &rl) == -1) {
		snprintf(err, errlen, "setrlimit(RLIMIT_CORE): %s",
		    strerror(errno));
		return -1;
	}
	return 0;
}
