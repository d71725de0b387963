//! The [`Engine`] conformance suite: one set of cases every backend must pass, so that
//! [`crate::MemoryEngine`] and [`crate::RedbEngine`] cannot drift apart (TiKV's
//! `engine_traits_tests`).
//!
//! Each case takes a factory of fresh, empty engines (cases that need two engines, such as the
//! snapshot round trip, call it twice). Run them all with [`run_all`], or one `#[test]` per case
//! with [`conformance_tests!`](crate::conformance_tests).

// Test support: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use crate::Engine;

mod apply;
mod expiry_index;
pub(crate) mod fixtures;
mod group_data;
mod history;
mod log;
mod scan;
mod ttl;

pub use apply::*;
pub use expiry_index::*;
pub use group_data::*;
pub use history::*;
pub use log::*;
pub use scan::*;
pub use ttl::*;

/// Makes a fresh, empty engine.
pub type MakeEngine<'a> = &'a dyn Fn() -> Arc<dyn Engine>;

/// One conformance case.
pub type Case = fn(MakeEngine<'_>);

/// Every case, by name. [`conformance_tests!`](crate::conformance_tests) checks it lists them all.
pub const CASES: &[(&str, Case)] = &[
    ("log_append_read_and_bounds", log_append_read_and_bounds),
    (
        "log_truncate_and_purge_leave_no_holes",
        log_truncate_and_purge_leave_no_holes,
    ),
    ("log_is_isolated_per_group", log_is_isolated_per_group),
    ("meta_set_and_read", meta_set_and_read),
    ("put_version_is_the_log_index", put_version_is_the_log_index),
    (
        "version_condition_matches_or_reports_current",
        version_condition_matches_or_reports_current,
    ),
    (
        "absent_condition_only_creates",
        absent_condition_only_creates,
    ),
    (
        "delete_returns_previous_version_or_not_found",
        delete_returns_previous_version_or_not_found,
    ),
    (
        "versions_increase_across_delete_and_recreate",
        versions_increase_across_delete_and_recreate,
    ),
    (
        "apply_records_applied_with_the_data",
        apply_records_applied_with_the_data,
    ),
    (
        "batches_commit_together_with_outcomes_per_batch",
        batches_commit_together_with_outcomes_per_batch,
    ),
    (
        "scan_prefix_after_limit_sorted",
        scan_prefix_after_limit_sorted,
    ),
    ("scan_is_isolated_per_group", scan_is_isolated_per_group),
    (
        "scan_stops_at_the_byte_budget_but_returns_one_row",
        scan_stops_at_the_byte_budget_but_returns_one_row,
    ),
    ("export_import_round_trip", export_import_round_trip),
    (
        "export_of_empty_group_imports_as_empty",
        export_of_empty_group_imports_as_empty,
    ),
    (
        "import_of_corrupt_stream_changes_nothing",
        import_of_corrupt_stream_changes_nothing,
    ),
    (
        "drop_group_removes_only_that_group",
        drop_group_removes_only_that_group,
    ),
    (
        "groups_lists_groups_with_metadata",
        groups_lists_groups_with_metadata,
    ),
    (
        "once_applies_a_client_write_at_most_once",
        once_applies_a_client_write_at_most_once,
    ),
    (
        "sessions_travel_with_snapshots",
        sessions_travel_with_snapshots,
    ),
    (
        "timed_put_stores_its_deadline_and_a_plain_put_clears_it",
        timed_put_stores_its_deadline_and_a_plain_put_clears_it,
    ),
    (
        "expire_removes_a_key_only_at_its_version_once_due",
        expire_removes_a_key_only_at_its_version_once_due,
    ),
    (
        "a_rewrite_or_refresh_after_the_expiry_check_survives",
        a_rewrite_or_refresh_after_the_expiry_check_survives,
    ),
    (
        "refresh_moves_the_deadline_and_keeps_value_and_version",
        refresh_moves_the_deadline_and_keeps_value_and_version,
    ),
    (
        "timed_commands_see_expired_keys_as_absent",
        timed_commands_see_expired_keys_as_absent,
    ),
    (
        "expired_lists_due_keys_earliest_first_per_group",
        expired_lists_due_keys_earliest_first_per_group,
    ),
    (
        "scan_with_a_clock_skips_expired_keys",
        scan_with_a_clock_skips_expired_keys,
    ),
    (
        "ttl_commands_commit_in_one_batch",
        ttl_commands_commit_in_one_batch,
    ),
    (
        "ttl_commands_apply_at_most_once_in_sessions",
        ttl_commands_apply_at_most_once_in_sessions,
    ),
    (
        "deadlines_travel_with_snapshots_and_rebuild_the_index",
        deadlines_travel_with_snapshots_and_rebuild_the_index,
    ),
    (
        "a_snapshot_from_before_deadlines_imports_as_permanent_keys",
        a_snapshot_from_before_deadlines_imports_as_permanent_keys,
    ),
    (
        "dropping_a_group_clears_only_its_expiry_index",
        dropping_a_group_clears_only_its_expiry_index,
    ),
    (
        "history_has_a_row_per_command_that_changed_a_key",
        history_has_a_row_per_command_that_changed_a_key,
    ),
    (
        "batch_commands_take_their_ordinal_at_the_entry_index",
        batch_commands_take_their_ordinal_at_the_entry_index,
    ),
    (
        "history_pages_stop_at_the_limit_or_the_byte_budget",
        history_pages_stop_at_the_limit_or_the_byte_budget,
    ),
    (
        "purging_the_log_keeps_the_history",
        purging_the_log_keeps_the_history,
    ),
    (
        "importing_a_snapshot_takes_its_history",
        importing_a_snapshot_takes_its_history,
    ),
    (
        "dropping_a_group_clears_its_history",
        dropping_a_group_clears_its_history,
    ),
    (
        "history_start_op_forgets_older_rows",
        history_start_op_forgets_older_rows,
    ),
];

/// Run every case against engines from `make`.
pub fn run_all(make: MakeEngine<'_>) {
    for (_, case) in CASES {
        case(make);
    }
}

/// One `#[test]` per conformance case, each calling `$runner(case)`. The runner sets up
/// whatever the backend needs (a temporary directory, say) and passes the case a factory:
///
/// ```
/// use std::sync::Arc;
/// use kv_storage::{Engine, MemoryEngine};
///
/// fn memory(case: kv_storage::testing::Case) {
///     case(&|| Arc::new(MemoryEngine::new()) as Arc<dyn Engine>)
/// }
///
/// mod memory_engine {
///     kv_storage::conformance_tests!(super::memory);
/// }
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! conformance_tests {
    ($runner:path) => {
        $crate::conformance_tests!(@cases $runner;
            log_append_read_and_bounds,
            log_truncate_and_purge_leave_no_holes,
            log_is_isolated_per_group,
            meta_set_and_read,
            put_version_is_the_log_index,
            version_condition_matches_or_reports_current,
            absent_condition_only_creates,
            delete_returns_previous_version_or_not_found,
            versions_increase_across_delete_and_recreate,
            apply_records_applied_with_the_data,
            batches_commit_together_with_outcomes_per_batch,
            scan_prefix_after_limit_sorted,
            scan_is_isolated_per_group,
            scan_stops_at_the_byte_budget_but_returns_one_row,
            export_import_round_trip,
            export_of_empty_group_imports_as_empty,
            import_of_corrupt_stream_changes_nothing,
            drop_group_removes_only_that_group,
            groups_lists_groups_with_metadata,
            once_applies_a_client_write_at_most_once,
            sessions_travel_with_snapshots,
            timed_put_stores_its_deadline_and_a_plain_put_clears_it,
            expire_removes_a_key_only_at_its_version_once_due,
            a_rewrite_or_refresh_after_the_expiry_check_survives,
            refresh_moves_the_deadline_and_keeps_value_and_version,
            timed_commands_see_expired_keys_as_absent,
            expired_lists_due_keys_earliest_first_per_group,
            scan_with_a_clock_skips_expired_keys,
            ttl_commands_commit_in_one_batch,
            ttl_commands_apply_at_most_once_in_sessions,
            deadlines_travel_with_snapshots_and_rebuild_the_index,
            a_snapshot_from_before_deadlines_imports_as_permanent_keys,
            dropping_a_group_clears_only_its_expiry_index,
            history_has_a_row_per_command_that_changed_a_key,
            batch_commands_take_their_ordinal_at_the_entry_index,
            history_pages_stop_at_the_limit_or_the_byte_budget,
            purging_the_log_keeps_the_history,
            importing_a_snapshot_takes_its_history,
            dropping_a_group_clears_its_history,
            history_start_op_forgets_older_rows,
        );
    };
    (@cases $runner:path; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                $runner($crate::testing::$case);
            }
        )*

        #[test]
        fn conformance_tests_cover_every_case() {
            let listed = [$(stringify!($case)),*];
            let all: Vec<&str> = $crate::testing::CASES.iter().map(|(name, _)| *name).collect();
            assert_eq!(listed.as_slice(), all.as_slice());
        }
    };
}
