/*
 * secmem: page-backed memory for secrets (keys, task ids, assertions).
 *
 * Every block is its own anonymous mapping so it can be locked (kept out of
 * swap) and excluded from core dumps without touching unrelated heap pages.
 * Blocks are zeroed on allocation and cleansed before release.
 */
#ifndef SP_SECMEM_H
#define SP_SECMEM_H

#include <stdbool.h>
#include <stddef.h>

/* Returns a zeroed block of at least n bytes, or NULL (n == 0 or ENOMEM).
 * A failed mlock is tolerated; see secmem_lock_failed(). */
void	*secmem_alloc(size_t n);

/* Cleanses and releases a block from secmem_alloc(); NULL is a no-op.
 * n must be the size passed to secmem_alloc(). */
void	 secmem_free(void *p, size_t n);

/* Copies s (NUL-terminated) into secure memory; NULL on failure. */
char	*secmem_strdup(const char *s);

/* Copies len bytes of s and adds a NUL; NULL on failure. */
char	*secmem_strndup(const char *s, size_t len);

/* Releases a string from secmem_strdup()/secmem_strndup(); NULL ok. */
void	 secmem_strfree(char *s);

/* True once any mlock() has failed (e.g. RLIMIT_MEMLOCK too low): the
 * daemon can warn once that secrets may reach swap. */
bool	 secmem_lock_failed(void);

/* No core dumps, no ptrace attach by same-uid processes. */
int	 secmem_harden_process(char *err, size_t errlen);

#endif
