/* The connection count: one acquire, exactly one release per slot. */
#include <check.h>
#include <stdlib.h>

#include "core/conn_slot.h"
#include "check_run.h"

START_TEST(slot_limit)
{
	struct conn_limit lim;
	struct conn_slot a, b, c;

	conn_limit_init(&lim, 2);
	ck_assert_int_eq(conn_slot_acquire(&lim, &a), 0);
	ck_assert_int_eq(conn_slot_acquire(&lim, &b), 0);
	ck_assert_int_eq(conn_slot_acquire(&lim, &c), -1);
	ck_assert(!conn_slot_held(&c));
	ck_assert_int_eq(conn_limit_count(&lim), 2);
	conn_slot_release(&c);		/* empty: nothing to give back */
	ck_assert_int_eq(conn_limit_count(&lim), 2);
	conn_slot_release(&a);
	conn_slot_release(&a);		/* idempotent */
	ck_assert_int_eq(conn_limit_count(&lim), 1);
	ck_assert_int_eq(conn_slot_acquire(&lim, &c), 0);
	conn_slot_release(&b);
	conn_slot_release(&c);
	ck_assert_int_eq(conn_limit_count(&lim), 0);
}
END_TEST

START_TEST(slot_move_and_extra)
{
	struct conn_limit lim;
	struct conn_slot peek, tunnel = { NULL }, relay = { NULL }, plain;

	conn_limit_init(&lim, 1);
	ck_assert_int_eq(conn_slot_acquire(&lim, &peek), 0);
	conn_slot_move(&tunnel, &peek);
	conn_slot_release(&peek);	/* the old holder gives back nothing */
	ck_assert_int_eq(conn_limit_count(&lim), 1);
	conn_slot_move(&relay, &tunnel);
	/* the plain side of an intercepted CONNECT counts past the limit */
	conn_slot_acquire_extra(&lim, &plain);
	ck_assert_int_eq(conn_limit_count(&lim), 2);
	conn_slot_release(&plain);
	/* a relay that failed to start and is then torn down twice */
	conn_slot_release(&relay);
	conn_slot_release(&relay);
	conn_slot_release(&tunnel);
	ck_assert_int_eq(conn_limit_count(&lim), 0);
	ck_assert_int_eq(conn_slot_acquire(&lim, &peek), 0);
	conn_slot_release(&peek);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("conn_slot");
	TCase *tc = tcase_create("slot");

	tcase_add_test(tc, slot_limit);
	tcase_add_test(tc, slot_move_and_extra);
	suite_add_tcase(s, tc);
	return check_run(s);
}
