//! Cases for the change history: which commands leave rows, their positions, paging, and how
//! purges, imports, drops and [`Op::HistoryStart`] move the start.

use super::fixtures::*;
use super::MakeEngine;
use crate::{
    Change, ChangeKind, ChangePage, ChangePos, Command, Condition, Engine, GroupId, Op, Outcome,
    WriteBatch,
};

/// Before any position of any entry.
pub(super) const FROM_START: ChangePos = ChangePos {
    index: 0,
    sub: u32::MAX,
};

fn pos(index: u64, sub: u32) -> ChangePos {
    ChangePos { index, sub }
}

fn row(kind: ChangeKind, key: &str, version: u64, value: &str) -> Change {
    Change {
        kind,
        key: key.as_bytes().to_vec(),
        version,
        value: value.as_bytes().to_vec(),
    }
}

fn put_row(key: &str, version: u64, value: &str) -> Change {
    row(ChangeKind::Put, key, version, value)
}

fn delete_row(key: &str, version: u64) -> Change {
    row(ChangeKind::Delete, key, version, "")
}

/// Every row of the group with the start.
pub fn all_changes(engine: &dyn Engine, group: GroupId) -> ChangePage {
    engine
        .changes(group, FROM_START, usize::MAX, usize::MAX)
        .unwrap()
}

/// The positions of every row of the group.
fn positions(engine: &dyn Engine, group: GroupId) -> Vec<ChangePos> {
    all_changes(engine, group)
        .rows
        .into_iter()
        .map(|(p, _)| p)
        .collect()
}

fn once(client: u64, seq: u64, command: Command) -> Command {
    Command::Once {
        client,
        seq,
        ack_below: 0,
        command: Box::new(command),
    }
}

/// Apply `commands` at their indexes in one op.
fn apply_many(engine: &dyn Engine, group: GroupId, commands: Vec<(u64, Command)>) -> Vec<Outcome> {
    write_one(
        engine,
        group,
        Op::Apply {
            commands,
            applied: b"applied".to_vec(),
        },
    )
}

pub fn history_has_a_row_per_command_that_changed_a_key(make: MakeEngine<'_>) {
    let e = make();
    let e = e.as_ref();
    assert_eq!(e.history_start(G1).unwrap(), None);
    assert_eq!(
        all_changes(e, G1),
        ChangePage {
            start: 1,
            rows: vec![]
        },
        "a fresh group holds its whole (empty) history"
    );
    let late = NOW + 10;
    let steps: Vec<(Command, Outcome)> = vec![
        (
            put("k", "v1", Condition::Always),
            Outcome::Written { version: 1 },
        ),
        // A failed compare-and-set changes nothing.
        (
            put("k", "x", Condition::Version(9)),
            Outcome::PreconditionFailed { current: Some(1) },
        ),
        (
            delete("k", Condition::Always),
            Outcome::Deleted { version: 1 },
        ),
        (delete("k", Condition::Always), Outcome::NotFound),
        (
            timed_put("t", "tv", Some(late), Condition::Always, NOW),
            Outcome::Written { version: 5 },
        ),
        // A refresh keeps value and version: not a change.
        (
            refresh("t", late + 10, Condition::Always, NOW),
            Outcome::Refreshed {
                version: 5,
                expires_at: late + 10,
            },
        ),
        (
            expire("t", 4, late + 10),
            Outcome::PreconditionFailed { current: Some(5) },
        ),
        (expire("t", 5, late + 10), Outcome::Expired { version: 5 }),
        (
            once(7, 1, put("s", "first", Condition::Absent)),
            Outcome::Written { version: 9 },
        ),
        // The retry is answered from the session: applied once, one row.
        (
            once(7, 1, put("s", "first", Condition::Absent)),
            Outcome::Written { version: 9 },
        ),
        (
            timed_delete("s", Condition::Version(9), NOW),
            Outcome::Deleted { version: 9 },
        ),
        (timed_delete("s", Condition::Always, NOW), Outcome::NotFound),
    ];
    for ((cmd, expected), index) in steps.into_iter().zip(1..) {
        assert_eq!(apply(e, G1, index, cmd), expected, "at {index}");
    }
    assert_eq!(
        all_changes(e, G1),
        ChangePage {
            start: 1,
            rows: vec![
                (pos(1, 0), put_row("k", 1, "v1")),
                (pos(3, 0), delete_row("k", 1)),
                (pos(5, 0), put_row("t", 5, "tv")),
                (pos(8, 0), row(ChangeKind::Expire, "t", 5, "")),
                (pos(9, 0), put_row("s", 9, "first")),
                (pos(11, 0), delete_row("s", 9)),
            ],
        }
    );
    assert_eq!(e.history_start(G1).unwrap(), Some(1));
    assert_eq!(all_changes(e, G2).rows, vec![], "rows are per group");
}

pub fn batch_commands_take_their_ordinal_at_the_entry_index(make: MakeEngine<'_>) {
    let e = make();
    let e = e.as_ref();
    let out = apply_many(
        e,
        G1,
        vec![
            (4, put("a", "a4", Condition::Always)),
            // Its ordinal is taken even though it changes nothing.
            (4, put("b", "b4", Condition::Version(1))),
            (4, put("c", "c4", Condition::Always)),
            (5, delete("a", Condition::Always)),
            (6, put("b", "b6", Condition::Always)),
            (6, delete("c", Condition::Always)),
        ],
    );
    assert_eq!(out[1], Outcome::PreconditionFailed { current: None });
    assert_eq!(
        all_changes(e, G1).rows,
        vec![
            (pos(4, 0), put_row("a", 4, "a4")),
            (pos(4, 2), put_row("c", 4, "c4")),
            (pos(5, 0), delete_row("a", 4)),
            (pos(6, 0), put_row("b", 6, "b6")),
            (pos(6, 1), delete_row("c", 4)),
        ]
    );
    // A cursor inside an entry resumes inside it; `end_of` skips the rest of the entry.
    let after = |p| -> Vec<ChangePos> {
        e.changes(G1, p, usize::MAX, usize::MAX)
            .unwrap()
            .rows
            .into_iter()
            .map(|(p, _)| p)
            .collect()
    };
    assert_eq!(
        after(pos(4, 0)),
        [pos(4, 2), pos(5, 0), pos(6, 0), pos(6, 1)]
    );
    assert_eq!(
        after(ChangePos::end_of(4)),
        [pos(5, 0), pos(6, 0), pos(6, 1)]
    );
    assert_eq!(after(pos(6, 1)), []);
    assert_eq!(after(ChangePos::end_of(u64::MAX)), []);
}

pub fn history_pages_stop_at_the_limit_or_the_byte_budget(make: MakeEngine<'_>) {
    let e = make();
    let e = e.as_ref();
    // Each row counts key + value: 1 + 4 bytes.
    for i in 1..=6 {
        apply(e, G1, i, put("k", &format!("v{i:03}"), Condition::Always));
    }
    let page = |after, limit, max_bytes| -> Vec<u64> {
        e.changes(G1, after, limit, max_bytes)
            .unwrap()
            .rows
            .into_iter()
            .map(|(p, _)| p.index)
            .collect()
    };
    assert_eq!(page(FROM_START, 4, usize::MAX), [1, 2, 3, 4]);
    assert_eq!(page(ChangePos::end_of(4), 4, usize::MAX), [5, 6]);
    assert_eq!(page(FROM_START, 0, usize::MAX), Vec::<u64>::new());
    assert_eq!(e.changes(G1, FROM_START, 0, 0).unwrap().start, 1);
    // The row that reaches the budget is included ...
    assert_eq!(page(FROM_START, usize::MAX, 10), [1, 2]);
    assert_eq!(page(FROM_START, usize::MAX, 11), [1, 2, 3]);
    // ... so even a budget smaller than one row makes progress.
    assert_eq!(page(ChangePos::end_of(2), usize::MAX, 1), [3]);
    assert_eq!(page(ChangePos::end_of(2), usize::MAX, 0), [3]);
    // Paging with small pages visits every row once.
    let mut cursor = FROM_START;
    let mut seen = Vec::new();
    loop {
        let rows = e.changes(G1, cursor, 2, 6).unwrap().rows;
        let Some((last, _)) = rows.last() else { break };
        cursor = *last;
        seen.extend(rows.into_iter().map(|(p, _)| p.index));
    }
    assert_eq!(seen, [1, 2, 3, 4, 5, 6]);
}

pub fn purging_the_log_keeps_the_history(make: MakeEngine<'_>) {
    let e = make();
    let e = e.as_ref();
    append(e, G1, 1..=5);
    for i in 1..=5 {
        apply(e, G1, i, put(&format!("k{i}"), "v", Condition::Always));
    }
    write_one(e, G1, Op::PurgeLog { through: 3 });
    assert_eq!(e.log_bounds(G1).unwrap(), Some((4, 5)));
    let page = all_changes(e, G1);
    assert_eq!(page.start, 1, "the history is trimmed on its own");
    assert_eq!(page.rows.len(), 5);
    // Trimmed together with a purge, in one batch, the rows behind the new start go.
    let batch = WriteBatch::new(G1, true)
        .op(Op::PurgeLog { through: 4 })
        .op(Op::HistoryStart { index: 3 });
    e.write(&[batch]).unwrap();
    assert_eq!(all_changes(e, G1).start, 3);
    assert_eq!(positions(e, G1), [pos(3, 0), pos(4, 0), pos(5, 0)]);
}

pub fn importing_a_snapshot_takes_its_history(make: MakeEngine<'_>) {
    let source = make();
    let s = source.as_ref();
    fill(s, G1, 1, &["a", "b", "c"]);
    write_one(s, G1, Op::HistoryStart { index: 2 });
    let mut stream = Vec::new();
    s.export_group(G1, &mut stream, 0).unwrap();

    let target = make();
    let t = target.as_ref();
    for i in 1..=4 {
        apply(t, G1, i, put("stale", "v", Condition::Always));
    }
    apply(t, G2, 1, put("other", "v", Condition::Always));
    let before = all_changes(t, G1);
    let mut corrupt = stream.clone();
    corrupt.truncate(stream.len() - 1);
    assert!(t
        .import_group(G1, &mut corrupt.as_slice(), b"bad", 40)
        .is_err());
    // A history that starts after the snapshot's end, or holds a row at or past it, is not
    // this snapshot's history.
    for end in [1, 3] {
        assert!(t
            .import_group(G1, &mut stream.as_slice(), b"bad", end)
            .is_err());
    }
    assert_eq!(
        all_changes(t, G1),
        before,
        "a refused import keeps the history"
    );

    t.import_group(G1, &mut stream.as_slice(), b"snap", 4)
        .unwrap();
    let expected = ChangePage {
        start: 2,
        rows: vec![
            (pos(2, 0), put_row("b", 2, "g1:b")),
            (pos(3, 0), put_row("c", 3, "g1:c")),
        ],
    };
    assert_eq!(all_changes(t, G1), expected, "the source's rows and start");
    assert_eq!(positions(t, G2), [pos(1, 0)]);
    apply(t, G1, 4, put("a", "after", Condition::Always));
    assert_eq!(all_changes(t, G1).rows.len(), 3);
    // Exported again, the rows travel on: a second hop sees the same history.
    let mut again = Vec::new();
    t.export_group(G1, &mut again, 0).unwrap();
    let fresh = make();
    fresh
        .import_group(G1, &mut again.as_slice(), b"snap", 5)
        .unwrap();
    assert_eq!(all_changes(fresh.as_ref(), G1), all_changes(t, G1));
    // An export from a later index carries only the rows from there, and starts there.
    let mut recent = Vec::new();
    t.export_group(G1, &mut recent, 4).unwrap();
    let fresh = make();
    fresh
        .import_group(G1, &mut recent.as_slice(), b"snap", 5)
        .unwrap();
    assert_eq!(
        all_changes(fresh.as_ref(), G1),
        ChangePage {
            start: 4,
            rows: vec![(pos(4, 0), put_row("a", 4, "after"))],
        }
    );

    // A stream from before snapshots carried history: no rows, complete from its end. The
    // start is set, not raised: a snapshot may be older than what was there.
    let old = super::fixtures::snapshot_from_before_deadlines();
    t.import_group(G1, &mut old.as_slice(), b"old", 3).unwrap();
    assert_eq!(
        all_changes(t, G1),
        ChangePage {
            start: 3,
            rows: vec![]
        }
    );
}

pub fn dropping_a_group_clears_its_history(make: MakeEngine<'_>) {
    let e = make();
    let e = e.as_ref();
    for g in [G1, G2] {
        apply(e, g, 1, put("k", "v", Condition::Always));
        write_one(e, g, Op::PurgeLog { through: 0 });
        apply(e, g, 2, put("k", "v", Condition::Always));
        write_one(e, g, Op::HistoryStart { index: 2 });
    }
    e.drop_group(G1).unwrap();
    assert_eq!(e.history_start(G1).unwrap(), None);
    assert_eq!(
        all_changes(e, G1),
        ChangePage {
            start: 1,
            rows: vec![]
        }
    );
    assert_eq!(e.history_start(G2).unwrap(), Some(2));
    assert_eq!(positions(e, G2), [pos(2, 0)]);
}

pub fn history_start_op_forgets_older_rows(make: MakeEngine<'_>) {
    let e = make();
    let e = e.as_ref();
    // Data from before the history: applied, but no start stored and no rows.
    write_one(e, G1, Op::HistoryStart { index: 6 });
    assert_eq!(e.history_start(G1).unwrap(), Some(6));
    apply(e, G1, 6, put("k", "v", Condition::Always));
    assert_eq!(
        all_changes(e, G1),
        ChangePage {
            start: 6,
            rows: vec![(pos(6, 0), put_row("k", 6, "v"))],
        },
        "an apply keeps a stored start"
    );

    for i in 1..=5 {
        apply(e, G2, i, put("k", "v", Condition::Always));
    }
    write_one(e, G2, Op::HistoryStart { index: 3 });
    assert_eq!(all_changes(e, G2).start, 3);
    assert_eq!(positions(e, G2), [pos(3, 0), pos(4, 0), pos(5, 0)]);
    write_one(e, G2, Op::HistoryStart { index: 2 });
    assert_eq!(all_changes(e, G2).start, 3, "the start never moves back");
    assert_eq!(positions(e, G2).len(), 3);
}
