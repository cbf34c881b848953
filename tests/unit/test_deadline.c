/* The deadline heap: earliest first, moves and removals keep the order,
 * and every entry knows whether it is in. */
#include <check.h>
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

int
main(void)
{
	Suite *s = suite_create("deadline");
	TCase *tc = tcase_create("heap");

	tcase_add_test(tc, heap_order);
	tcase_add_test(tc, heap_wait);
	suite_add_tcase(s, tc);
	return check_run(s);
}
