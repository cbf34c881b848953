/* The deadline heap: earliest first, moves and removals keep the order,
 * and every entry knows whether it is in. */
#include <check.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

#include "core/deadline.h"
#include "check_run.h"

/* Pops everything in order; fails if a deadline comes before the last. */
static size_t
drain_sorted(struct deadline_heap *h)
{
	struct deadline *d;
	long long last = -1;
	size_t n = 0;

	while ((d = deadline_first(h)) != NULL) {
		ck_assert(d->when >= last);
		last = d->when;
		deadline_del(h, d);
		ck_assert(!deadline_armed(d));
		n++;
	}
	return n;
}

/* Every entry knows its place, and no parent is later than its child.
 * (Plain tests: each ck_assert costs Check a write.) */
static bool
heap_ok(const struct deadline_heap *h)
{
	size_t i;

	if (h->n > h->cap)
		return false;
	for (i = 0; i < h->n; i++) {
		if (h->v[i]->slot != i + 1)
			return false;
		if (i > 0 && h->v[(i - 1) / 2]->when > h->v[i]->when)
			return false;
	}
	return true;
}

START_TEST(heap_order)
{
	struct deadline_heap h = { 0 };
	struct deadline e[500] = { { 0, 0 } };
	size_t i;

	ck_assert_int_eq(deadline_wait(&h, 5), -1);
	srand(7);
	for (i = 0; i < 500; i++)
		ck_assert_int_eq(deadline_set(&h, &e[i], rand() % 1000), 0);
	ck_assert_int_eq(h.n, 500);
	/* moves both ways, and removals from the middle */
	for (i = 0; i < 500; i += 3)
		deadline_set(&h, &e[i], rand() % 2000);
	for (i = 1; i < 500; i += 7)
		deadline_del(&h, &e[i]);
	deadline_del(&h, &e[1]);	/* not in: a no-op */
	ck_assert_int_eq(drain_sorted(&h), 500 - 72);
	deadline_heap_free(&h);
}
END_TEST

START_TEST(heap_wait)
{
	struct deadline_heap h = { 0 };
	struct deadline a = { 0, 0 }, b = { 0, 0 };

	ck_assert_int_eq(deadline_reserve(&h, 2), 0);
	deadline_set(&h, &a, 1300);
	deadline_set(&h, &b, 1100);
	ck_assert_ptr_eq(deadline_first(&h), &b);
	ck_assert_int_eq(deadline_wait(&h, 1000), 100);
	ck_assert_int_eq(deadline_wait(&h, 1200), 0);	/* due: no wait */
	deadline_set(&h, &b, 1500);			/* re-armed later */
	ck_assert_ptr_eq(deadline_first(&h), &a);
	ck_assert_int_eq(deadline_wait(&h, 1000), 300);
	deadline_heap_free(&h);
	ck_assert(!deadline_armed(&a) && !deadline_armed(&b));
	ck_assert_int_eq(deadline_wait(&h, 1000), -1);
}
END_TEST

/* An attacker's mix: moves both ways, removals anywhere (not only the
 * top), re-arms of removed entries, many equal deadlines; the heap and a
 * plain copy of it agree after every step. */
START_TEST(heap_random_ops)
{
	enum { N = 300 };
	struct deadline_heap h = { 0 };
	static struct deadline e[N];
	static long long want[N];	/* -1: not in the heap */
	size_t i, k, armed = 0;
	long long min;

	for (i = 0; i < N; i++)
		want[i] = -1;
	srand(11);
	for (k = 0; k < 20000; k++) {
		i = (size_t)rand() % N;
		if (rand() % 3 == 0) {
			deadline_del(&h, &e[i]);
			armed -= want[i] >= 0;
			want[i] = -1;
		} else {
			long long when = rand() % 50;	/* many ties */

			ck_assert_int_eq(deadline_set(&h, &e[i], when), 0);
			armed += want[i] < 0;
			want[i] = when;
		}
		ck_assert(h.n == armed && heap_ok(&h) &&
		    deadline_armed(&e[i]) == (want[i] >= 0));
		if (k % 97 == 0) {
			for (min = -1, i = 0; i < N; i++)
				if (want[i] >= 0 && (min < 0 || want[i] < min))
					min = want[i];
			ck_assert_int_eq(deadline_wait(&h, 0), min);
		}
	}
	ck_assert_uint_eq(drain_sorted(&h), armed);
	deadline_heap_free(&h);
}
END_TEST

/* 10k streams opened in the same millisecond: equal keys, removals from
 * the middle, some re-armed later; all come out, in order. */
START_TEST(heap_same_deadline)
{
	enum { N = 10000 };
	struct deadline_heap h = { 0 };
	static struct deadline e[N];
	size_t i;

	for (i = 0; i < N; i++)
		ck_assert_int_eq(deadline_set(&h, &e[i], 5000), 0);
	ck_assert(heap_ok(&h));
	for (i = 1; i < N; i += 2)
		deadline_del(&h, &e[i]);
	for (i = 0; i < N; i += 4)
		deadline_set(&h, &e[i], 6000);
	ck_assert(heap_ok(&h));
	ck_assert_uint_eq(h.n, N / 2);
	ck_assert_int_eq(deadline_wait(&h, 4000), 1000);
	ck_assert_uint_eq(drain_sorted(&h), N / 2);
	for (i = 0; i < N; i++)
		ck_assert(!deadline_armed(&e[i]));
	deadline_heap_free(&h);
}
END_TEST

/* Freeing the heap leaves every entry out of it: a later removal (the
 * owner freed after the worker's heap) touches nothing. */
START_TEST(heap_free_then_del)
{
	struct deadline_heap h = { 0 };
	struct deadline a = { 0, 0 }, b = { 0, 0 };

	deadline_set(&h, &a, 10);
	deadline_set(&h, &b, 20);
	deadline_heap_free(&h);
	deadline_del(&h, &b);
	deadline_del(&h, &a);
	ck_assert_uint_eq(h.n, 0);
	ck_assert_ptr_null(deadline_first(&h));
	ck_assert_int_eq(deadline_set(&h, &b, 30), 0);	/* usable again */
	ck_assert_ptr_eq(deadline_first(&h), &b);
	deadline_heap_free(&h);
}
END_TEST

/* A size whose array would not fit a size_t is refused without an
 * allocation; before, the doubling wrapped to 0 and looped for ever, or
 * the byte count wrapped and a short array was written past. */
START_TEST(heap_reserve_overflow)
{
	struct deadline_heap h = { 0 };
	size_t most = SIZE_MAX / sizeof(struct deadline *);

	ck_assert_int_eq(deadline_reserve(&h, most + 1), -1);
	ck_assert_int_eq(deadline_reserve(&h, SIZE_MAX), -1);
	ck_assert_ptr_null(h.v);
	ck_assert_uint_eq(h.cap, 0);
}
END_TEST

/* Full at the largest size: one more is -1, and d is left out. */
START_TEST(heap_full)
{
	struct deadline_heap h = { 0 };
	struct deadline d = { 7, 0 };
	size_t most = SIZE_MAX / sizeof(struct deadline *);

	h.n = h.cap = most;
	ck_assert_int_eq(deadline_set(&h, &d, 5), -1);
	ck_assert_uint_eq(h.n, most);
	ck_assert_uint_eq(h.cap, most);
	ck_assert(!deadline_armed(&d));
	ck_assert_int_eq(d.when, 7);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("deadline");
	TCase *tc = tcase_create("heap");

	tcase_add_test(tc, heap_order);
	tcase_add_test(tc, heap_wait);
	tcase_add_test(tc, heap_random_ops);
	tcase_add_test(tc, heap_same_deadline);
	tcase_add_test(tc, heap_free_then_del);
	tcase_add_test(tc, heap_reserve_overflow);
	tcase_add_test(tc, heap_full);
	suite_add_tcase(s, tc);
	return check_run(s);
}
