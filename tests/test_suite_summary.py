"""The line a run ends with: what was left out and why, counted per reason."""

from __future__ import annotations

from tests.conftest import PG_HOW, PG_LOCAL, PG_SKIP, skip_lines


def test_postgres_skips_are_one_line_that_says_how_to_run_them() -> None:
    pg = f"{PG_SKIP}: {PG_HOW} (e.g. {PG_LOCAL})"
    lines = skip_lines([pg] * 127 + ["no SFTP"], deselected_slow=0, pg_missed=False)
    assert lines == [
        "127 PostgreSQL tests skipped: set GATEWAY_TEST_PG_URL or run make test-pg",
        "1 test skipped: no SFTP",
    ]


def test_auto_without_a_server_says_nothing_answered() -> None:
    lines = skip_lines([f"{PG_SKIP}: x"], deselected_slow=0, pg_missed=True)
    assert lines == [
        "1 PostgreSQL test skipped: nothing answered at 127.0.0.1:5432 "
        "(start PostgreSQL, or set GATEWAY_TEST_PG_URL)"
    ]


def test_slow_tests_left_out_are_counted() -> None:
    assert skip_lines([], deselected_slow=9, pg_missed=False) == [
        "9 tests marked slow not run (-m 'not slow'): make test-all runs them"
    ]
    assert skip_lines([], deselected_slow=0, pg_missed=False) == []
    assert skip_lines([], deselected_slow=0, pg_missed=False, deselected_faults=4) == [
        "4 tests of the fault suite not run (-m 'not faults'): make test-faults runs them"
    ]
