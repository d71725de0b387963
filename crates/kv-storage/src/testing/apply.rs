//! Cases for command application: versions, conditions, deletes, and multi-batch commits.

use super::fixtures::*;
use super::MakeEngine;
use crate::{Command, Condition, MetaKey, Op, Outcome, Record, WriteBatch};

pub fn put_version_is_the_log_index(make: MakeEngine<'_>) {
    let e = make();
    let e = e.as_ref();
    assert_eq!(get(e, G1, "k"), None);
    assert_eq!(
        apply(e, G1, 7, put("k", "v1", Condition::Always)),
        Outcome::Written { version: 7 }
    );
    assert_eq!(get(e, G1, "k"), Some(record(7, "v1")));
    assert_eq!(
        apply(e, G1, 12, put("k", "v2", Condition::Always)),
        Outcome::Written { version: 12 }
    );
    assert_eq!(get(e, G1, "k"), Some(record(12, "v2")));

    // Empty and binary keys and values are stored as given.
    let binary = Command::Put {
        key: vec![0, 255, 0],
        value: Vec::new(),
        cond: Condition::Always,
    };
    assert_eq!(apply(e, G1, 13, binary), Outcome::Written { version: 13 });
    assert_eq!(
        e.get(G1, &[0, 255, 0]).unwrap(),
        Some(Record::new(13, Vec::new()))
    );
    assert_eq!(e.get(G1, &[0, 255]).unwrap(), None);
}

pub fn version_condition_matches_or_reports_current(make: MakeEngine<'_>) {
    let e = make();
    let e = e.as_ref();
    assert_eq!(
        apply(e, G1, 1, put("k", "v", Condition::Version(1))),
        Outcome::PreconditionFailed { current: None },
        "a version condition on a missing key fails"
    );
    assert_eq!(get(e, G1, "k"), None);

    apply(e, G1, 2, put("k", "v2", Condition::Always));
    assert_eq!(
        apply(e, G1, 3, put("k", "v3", Condition::Version(1))),
        Outcome::PreconditionFailed { current: Some(2) }
    );
    assert_eq!(
        get(e, G1, "k"),
        Some(record(2, "v2")),
        "a failed put changes nothing"
    );
    assert_eq!(
        apply(e, G1, 4, put("k", "v4", Condition::Version(2))),
        Outcome::Written { version: 4 }
    );
    assert_eq!(get(e, G1, "k"), Some(record(4, "v4")));
    assert_eq!(
        apply(e, G1, 5, delete("k", Condition::Version(2))),
        Outcome::PreconditionFailed { current: Some(4) }
    );
    assert_eq!(
        get(e, G1, "k"),
        Some(record(4, "v4")),
        "a failed delete changes nothing"
    );
    assert_eq!(
        apply(e, G1, 6, delete("k", Condition::Version(4))),
        Outcome::Deleted { version: 4 }
    );
    assert_eq!(get(e, G1, "k"), None);
}

pub fn absent_condition_only_creates(make: MakeEngine<'_>) {
    let e = make();
    let e = e.as_ref();
    assert_eq!(
        apply(e, G1, 1, put("k", "first", Condition::Absent)),
        Outcome::Written { version: 1 }
    );
    assert_eq!(
        apply(e, G1, 2, put("k", "second", Condition::Absent)),
        Outcome::PreconditionFailed { current: Some(1) }
    );
    assert_eq!(get(e, G1, "k"), Some(record(1, "first")));
    assert_eq!(
        apply(e, G1, 3, delete("k", Condition::Absent)),
        Outcome::PreconditionFailed { current: Some(1) }
    );
    assert_eq!(get(e, G1, "k"), Some(record(1, "first")));
    // Absent is per group.
    assert_eq!(
        apply(e, G2, 4, put("k", "other", Condition::Absent)),
        Outcome::Written { version: 4 }
    );
}

pub fn delete_returns_previous_version_or_not_found(make: MakeEngine<'_>) {
    let e = make();
    let e = e.as_ref();
    assert_eq!(
        apply(e, G1, 1, delete("k", Condition::Always)),
        Outcome::NotFound
    );
    assert_eq!(
        apply(e, G1, 2, delete("k", Condition::Absent)),
        Outcome::NotFound,
        "deleting an absent key under Absent holds and finds nothing"
    );
    apply(e, G1, 3, put("k", "v", Condition::Always));
    assert_eq!(
        apply(e, G1, 4, delete("k", Condition::Always)),
        Outcome::Deleted { version: 3 }
    );
    assert_eq!(get(e, G1, "k"), None);
    assert_eq!(
        apply(e, G1, 5, delete("k", Condition::Always)),
        Outcome::NotFound
    );
}

pub fn versions_increase_across_delete_and_recreate(make: MakeEngine<'_>) {
    let e = make();
    let e = e.as_ref();
    let mut seen = Vec::new();
    let mut index = 0;
    for round in 0..3 {
        index += 1;
        let created = apply(
            e,
            G1,
            index,
            put("k", &format!("v{round}"), Condition::Absent),
        );
        let Outcome::Written { version } = created else {
            panic!("round {round}: expected a write, got {created:?}");
        };
        seen.push(version);
        index += 1;
        assert_eq!(
            apply(e, G1, index, delete("k", Condition::Version(version))),
            Outcome::Deleted { version }
        );
    }
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "versions {seen:?}");
}

pub fn apply_records_applied_with_the_data(make: MakeEngine<'_>) {
    let e = make();
    let e = e.as_ref();
    assert_eq!(e.read_meta(G1, MetaKey::Applied).unwrap(), None);
    let out = write_one(
        e,
        G1,
        Op::Apply {
            commands: vec![
                (1, put("a", "1", Condition::Always)),
                (2, put("a", "2", Condition::Version(1))),
                (3, delete("b", Condition::Always)),
            ],
            applied: b"applied-3".to_vec(),
        },
    );
    assert_eq!(
        out,
        vec![
            Outcome::Written { version: 1 },
            Outcome::Written { version: 2 },
            Outcome::NotFound
        ],
        "later commands see earlier ones"
    );
    assert_eq!(
        e.read_meta(G1, MetaKey::Applied).unwrap(),
        Some(b"applied-3".to_vec())
    );

    // Applying no commands still advances Applied (e.g. a membership entry).
    let out = write_one(
        e,
        G1,
        Op::Apply {
            commands: Vec::new(),
            applied: b"applied-4".to_vec(),
        },
    );
    assert_eq!(out, vec![]);
    assert_eq!(
        e.read_meta(G1, MetaKey::Applied).unwrap(),
        Some(b"applied-4".to_vec())
    );
    assert_eq!(e.read_meta(G2, MetaKey::Applied).unwrap(), None);
}

pub fn batches_commit_together_with_outcomes_per_batch(make: MakeEngine<'_>) {
    let e = make();
    let e = e.as_ref();
    assert_eq!(e.write(&[]).unwrap(), Vec::<Vec<Outcome>>::new());

    let batches = [
        WriteBatch::new(G1, false).op(Op::Apply {
            commands: vec![(1, put("k", "a", Condition::Always))],
            applied: b"g1-1".to_vec(),
        }),
        WriteBatch::new(G2, true)
            .op(Op::AppendLog {
                entries: entries(G2, 1..=2),
            })
            .op(Op::SetMeta {
                key: MetaKey::Vote,
                value: b"vote".to_vec(),
            }),
        // Sees the first batch's write: batches apply in order.
        WriteBatch::new(G1, false).op(Op::Apply {
            commands: vec![
                (2, put("k", "b", Condition::Version(1))),
                (3, put("k", "c", Condition::Version(1))),
            ],
            applied: b"g1-3".to_vec(),
        }),
        WriteBatch::new(G2, false),
    ];
    let out = e.write(&batches).unwrap();
    assert_eq!(
        out,
        vec![
            vec![Outcome::Written { version: 1 }],
            vec![],
            vec![
                Outcome::Written { version: 2 },
                Outcome::PreconditionFailed { current: Some(2) }
            ],
            vec![],
        ]
    );
    assert_eq!(get(e, G1, "k"), Some(record(2, "b")));
    assert_eq!(
        e.read_meta(G1, MetaKey::Applied).unwrap(),
        Some(b"g1-3".to_vec())
    );
    assert_eq!(e.read_log(G2, 0, u64::MAX).unwrap(), entries(G2, 1..=2));
    assert_eq!(
        e.read_meta(G2, MetaKey::Vote).unwrap(),
        Some(b"vote".to_vec())
    );
    assert_eq!(get(e, G2, "k"), None);
}

fn once(client: u64, seq: u64, ack_below: u64, command: Command) -> Command {
    Command::Once {
        client,
        seq,
        ack_below,
        command: Box::new(command),
    }
}

pub fn once_applies_a_client_write_at_most_once(make: MakeEngine<'_>) {
    let e = make();
    let e = e.as_ref();
    apply(e, G1, 1, put("k", "v1", Condition::Always));
    // A CAS committed once...
    let first = apply(
        e,
        G1,
        2,
        once(7, 1, 1, put("k", "v2", Condition::Version(1))),
    );
    assert_eq!(first, Outcome::Written { version: 2 });
    // ...and its retry, committed again at a later index, answers the first outcome and
    // changes nothing (a plain retry would fail its precondition or write twice).
    let retry = apply(
        e,
        G1,
        3,
        once(7, 1, 1, put("k", "v2", Condition::Version(1))),
    );
    assert_eq!(retry, first);
    assert_eq!(get(e, G1, "k"), Some(record(2, "v2")));
    // Another client with the same sequence number is a different write.
    assert_eq!(
        apply(e, G1, 4, once(8, 1, 1, put("k", "v3", Condition::Always))),
        Outcome::Written { version: 4 }
    );
    // Failed preconditions are remembered too: the retry reports the same failure.
    let failed = apply(
        e,
        G1,
        5,
        once(7, 2, 1, put("k", "x", Condition::Version(1))),
    );
    assert_eq!(failed, Outcome::PreconditionFailed { current: Some(4) });
    assert_eq!(
        apply(
            e,
            G1,
            6,
            once(7, 2, 1, put("k", "x", Condition::Version(1)))
        ),
        failed
    );
    // Once acknowledged (ack_below past it), an outcome is forgotten: the same seq applies anew.
    apply(e, G1, 7, once(7, 3, 3, delete("other", Condition::Always)));
    assert_eq!(
        apply(
            e,
            G1,
            8,
            once(7, 1, 3, put("k", "again", Condition::Always))
        ),
        Outcome::Written { version: 8 }
    );
    // Sessions are per group.
    assert_eq!(
        apply(e, G2, 9, once(7, 3, 3, put("k", "g2", Condition::Always))),
        Outcome::Written { version: 9 }
    );
}
