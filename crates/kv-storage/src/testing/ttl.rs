//! Cases for the TTL commands: timed writes, refresh and expire, alone, in batches and in
//! sessions.

use super::fixtures::*;
use super::{assert_expiry_index_exact, MakeEngine};
use crate::{Command, Condition, Op, Outcome};

const TTL: u64 = 30_000;

pub fn timed_put_stores_its_deadline_and_a_plain_put_clears_it(make: MakeEngine<'_>) {
    let e = make();
    let e = e.as_ref();
    let at = NOW + TTL;
    assert_eq!(
        apply(
            e,
            G1,
            1,
            timed_put("k", "v1", Some(at), Condition::Always, NOW)
        ),
        Outcome::Written { version: 1 }
    );
    assert_eq!(get(e, G1, "k"), Some(expiring(1, "v1", at)));
    assert_eq!(e.next_deadline(G1).unwrap(), Some(at));
    assert_expiry_index_exact(e, G1);

    // A rewrite with another TTL moves the key in the index, not adds a second entry.
    apply(
        e,
        G1,
        2,
        timed_put("k", "v2", Some(at + 5), Condition::Always, NOW),
    );
    assert_eq!(all_expiring(e, G1), [("k".to_string(), 2)]);
    assert_eq!(e.next_deadline(G1).unwrap(), Some(at + 5));
    assert_expiry_index_exact(e, G1);

    // An untimed put makes the key permanent ...
    apply(e, G1, 3, put("k", "v3", Condition::Always));
    assert_eq!(get(e, G1, "k"), Some(record(3, "v3")));
    assert_eq!(e.next_deadline(G1).unwrap(), None);
    assert_expiry_index_exact(e, G1);

    // ... and so does a timed put without a deadline.
    apply(
        e,
        G1,
        4,
        timed_put("k", "v4", Some(at), Condition::Always, NOW),
    );
    apply(
        e,
        G1,
        5,
        timed_put("k", "v5", None, Condition::Version(4), NOW),
    );
    assert_eq!(get(e, G1, "k"), Some(record(5, "v5")));
    assert_expiry_index_exact(e, G1);

    // Deletes, timed or not, take the key out of the index.
    apply(
        e,
        G1,
        6,
        timed_put("a", "", Some(at), Condition::Absent, NOW),
    );
    apply(
        e,
        G1,
        7,
        timed_put("b", "", Some(at), Condition::Absent, NOW),
    );
    assert_eq!(all_expiring(e, G1).len(), 2);
    assert_eq!(
        apply(e, G1, 8, delete("a", Condition::Version(6))),
        Outcome::Deleted { version: 6 }
    );
    assert_eq!(
        apply(e, G1, 9, timed_delete("b", Condition::Always, NOW)),
        Outcome::Deleted { version: 7 }
    );
    assert_eq!(e.next_deadline(G1).unwrap(), None);
    assert_expiry_index_exact(e, G1);
}

pub fn expire_removes_a_key_only_at_its_version_once_due(make: MakeEngine<'_>) {
    let e = make();
    let e = e.as_ref();
    let at = NOW + TTL;
    apply(
        e,
        G1,
        1,
        timed_put("k", "v", Some(at), Condition::Always, NOW),
    );
    assert_eq!(
        apply(e, G1, 2, expire("k", 1, at - 1)),
        Outcome::PreconditionFailed { current: Some(1) },
        "not due yet by the entry's clock"
    );
    assert_eq!(
        apply(e, G1, 3, expire("k", 9, at)),
        Outcome::PreconditionFailed { current: Some(1) },
        "another version"
    );
    assert_eq!(get(e, G1, "k"), Some(expiring(1, "v", at)));
    assert_expiry_index_exact(e, G1);

    assert_eq!(
        apply(e, G1, 4, expire("k", 1, at)),
        Outcome::Expired { version: 1 },
        "due at its deadline"
    );
    assert_eq!(get(e, G1, "k"), None);
    assert_eq!(e.next_deadline(G1).unwrap(), None);
    assert_expiry_index_exact(e, G1);
    assert_eq!(apply(e, G1, 5, expire("k", 1, at)), Outcome::NotFound);

    // A permanent key never expires, whatever the clock.
    apply(e, G1, 6, put("p", "v", Condition::Always));
    assert_eq!(
        apply(e, G1, 7, expire("p", 6, u64::MAX)),
        Outcome::PreconditionFailed { current: Some(6) }
    );
    assert_eq!(get(e, G1, "p"), Some(record(6, "v")));
}

pub fn a_rewrite_or_refresh_after_the_expiry_check_survives(make: MakeEngine<'_>) {
    let e = make();
    let e = e.as_ref();
    let at = NOW + TTL;
    for (i, key) in ["rewritten", "permanent", "refreshed"].iter().enumerate() {
        let i = i as u64 + 1;
        apply(
            e,
            G1,
            i,
            timed_put(key, "old", Some(at), Condition::Always, NOW),
        );
    }
    // The expirer looks at `at` and finds all three due ...
    let due = e.expired(G1, at, 10).unwrap();
    assert_eq!(due.len(), 3);

    // ... and before its expiries are applied, one key is rewritten with a new TTL, one is
    // rewritten without one, and one is refreshed.
    apply(
        e,
        G1,
        4,
        timed_put("rewritten", "new", Some(at + TTL), Condition::Always, at),
    );
    apply(e, G1, 5, put("permanent", "new", Condition::Always));
    assert_eq!(
        apply(
            e,
            G1,
            6,
            refresh("refreshed", at + TTL, Condition::Always, at - 1)
        ),
        Outcome::Refreshed {
            version: 3,
            expires_at: at + TTL
        }
    );

    // The expiries the expirer proposed from its look change nothing.
    let outcomes = write_one(
        e,
        G1,
        Op::Apply {
            commands: due
                .iter()
                .zip(7..)
                .map(|((key, version), index)| {
                    let key = key.clone();
                    (
                        index,
                        Command::Expire {
                            key,
                            version: *version,
                            now: at,
                        },
                    )
                })
                .collect(),
            applied: b"7".to_vec(),
        },
    );
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, Outcome::PreconditionFailed { current: Some(_) })),
        "{outcomes:?}"
    );
    assert_eq!(get(e, G1, "rewritten"), Some(expiring(4, "new", at + TTL)));
    assert_eq!(get(e, G1, "permanent"), Some(record(5, "new")));
    assert_eq!(get(e, G1, "refreshed"), Some(expiring(3, "old", at + TTL)));
    assert_expiry_index_exact(e, G1);
}

pub fn refresh_moves_the_deadline_and_keeps_value_and_version(make: MakeEngine<'_>) {
    let e = make();
    let e = e.as_ref();
    let at = NOW + TTL;
    apply(
        e,
        G1,
        1,
        timed_put("k", "v", Some(at), Condition::Absent, NOW),
    );
    assert_eq!(
        apply(
            e,
            G1,
            2,
            refresh("k", at + TTL, Condition::Version(1), NOW + 10)
        ),
        Outcome::Refreshed {
            version: 1,
            expires_at: at + TTL
        }
    );
    assert_eq!(get(e, G1, "k"), Some(expiring(1, "v", at + TTL)));
    assert_expiry_index_exact(e, G1);

    // A refresh can also shorten the deadline; its condition is on the (unchanged) version.
    assert_eq!(
        apply(e, G1, 3, refresh("k", at, Condition::Version(2), NOW + 20)),
        Outcome::PreconditionFailed { current: Some(1) }
    );
    apply(e, G1, 4, refresh("k", at, Condition::Version(1), NOW + 20));
    assert_eq!(get(e, G1, "k"), Some(expiring(1, "v", at)));
    assert_expiry_index_exact(e, G1);

    // The lock recipe: after refreshes, release with If-Match on the version written.
    assert_eq!(
        apply(e, G1, 5, timed_delete("k", Condition::Version(1), NOW + 30)),
        Outcome::Deleted { version: 1 }
    );
    assert_expiry_index_exact(e, G1);

    // A permanent key gets a deadline; a missing key is not created.
    apply(e, G1, 6, put("p", "v", Condition::Always));
    apply(e, G1, 7, refresh("p", at, Condition::Always, NOW));
    assert_eq!(get(e, G1, "p"), Some(expiring(6, "v", at)));
    assert_eq!(
        apply(e, G1, 8, refresh("missing", at, Condition::Always, NOW)),
        Outcome::NotFound
    );
    assert_eq!(get(e, G1, "missing"), None);

    // An expired key is not brought back: the refresh finds it gone and changes nothing.
    assert_eq!(
        apply(e, G1, 9, refresh("p", at + TTL, Condition::Always, at)),
        Outcome::NotFound
    );
    assert_eq!(get(e, G1, "p"), Some(expiring(6, "v", at)));
    assert_expiry_index_exact(e, G1);
}

pub fn timed_commands_see_expired_keys_as_absent(make: MakeEngine<'_>) {
    let e = make();
    let e = e.as_ref();
    let at = NOW + TTL;
    apply(
        e,
        G1,
        1,
        timed_put("a", "old", Some(at), Condition::Always, NOW),
    );
    apply(
        e,
        G1,
        2,
        timed_put("b", "old", Some(at), Condition::Always, NOW),
    );

    // Just before the deadline the key is there for every condition.
    assert_eq!(
        apply(
            e,
            G1,
            3,
            timed_put("a", "x", None, Condition::Absent, at - 1)
        ),
        Outcome::PreconditionFailed { current: Some(1) }
    );
    // At the deadline it is gone: a create succeeds and replaces it.
    assert_eq!(
        apply(e, G1, 4, timed_put("a", "new", None, Condition::Absent, at)),
        Outcome::Written { version: 4 }
    );
    assert_eq!(get(e, G1, "a"), Some(record(4, "new")));

    // Conditions on the expired version fail as on a missing key, and a delete finds nothing
    // but leaves the record to its expiry entry.
    assert_eq!(
        apply(
            e,
            G1,
            5,
            timed_put("b", "x", None, Condition::Version(2), at)
        ),
        Outcome::PreconditionFailed { current: None }
    );
    assert_eq!(
        apply(e, G1, 6, timed_delete("b", Condition::Always, at)),
        Outcome::NotFound
    );
    assert_eq!(get(e, G1, "b"), Some(expiring(2, "old", at)));
    assert_eq!(all_expiring(e, G1), [("b".to_string(), 2)]);

    // The untimed commands have no clock and see the stored record.
    assert_eq!(
        apply(e, G1, 7, put("b", "x", Condition::Absent)),
        Outcome::PreconditionFailed { current: Some(2) }
    );
    assert_eq!(
        apply(e, G1, 8, expire("b", 2, at)),
        Outcome::Expired { version: 2 }
    );
    assert_expiry_index_exact(e, G1);
}

pub fn ttl_commands_commit_in_one_batch(make: MakeEngine<'_>) {
    let e = make();
    let e = e.as_ref();
    let at = NOW + TTL;
    apply(
        e,
        G1,
        1,
        timed_put("old", "v", Some(NOW), Condition::Always, NOW - 1),
    );
    apply(
        e,
        G1,
        2,
        timed_put("kept", "v", Some(at), Condition::Always, NOW),
    );
    // A batch is one entry: every command gets the entry's index as its version.
    let outcomes = write_one(
        e,
        G1,
        Op::Apply {
            commands: vec![
                (3, timed_put("new", "v", Some(at), Condition::Absent, NOW)),
                (3, refresh("kept", at + TTL, Condition::Version(2), NOW)),
                (3, expire("old", 1, NOW)),
                (3, put("plain", "v", Condition::Always)),
            ],
            applied: b"3".to_vec(),
        },
    );
    assert_eq!(
        outcomes,
        [
            Outcome::Written { version: 3 },
            Outcome::Refreshed {
                version: 2,
                expires_at: at + TTL
            },
            Outcome::Expired { version: 1 },
            Outcome::Written { version: 3 },
        ]
    );
    assert_eq!(
        all_expiring(e, G1),
        [("new".to_string(), 3), ("kept".to_string(), 2)]
    );
    assert_expiry_index_exact(e, G1);
}

pub fn ttl_commands_apply_at_most_once_in_sessions(make: MakeEngine<'_>) {
    let source = make();
    let e = source.as_ref();
    let at = NOW + TTL;
    let once = |seq, command: Command| Command::Once {
        client: 7,
        seq,
        ack_below: 0,
        command: Box::new(command),
    };
    let first = [
        once(1, timed_put("k", "v", Some(at), Condition::Absent, NOW)),
        once(2, refresh("k", at + TTL, Condition::Version(1), NOW)),
        once(
            3,
            timed_put("gone", "v", Some(NOW), Condition::Absent, NOW - 1),
        ),
        once(4, expire("gone", 3, NOW)),
        once(5, timed_put("del", "v", Some(at), Condition::Absent, NOW)),
        once(6, timed_delete("del", Condition::Always, NOW)),
    ];
    let mut outcomes = Vec::new();
    for (index, cmd) in (1..).zip(first) {
        outcomes.push(apply(e, G1, index, cmd));
    }
    assert_eq!(
        outcomes,
        [
            Outcome::Written { version: 1 },
            Outcome::Refreshed {
                version: 1,
                expires_at: at + TTL
            },
            Outcome::Written { version: 3 },
            Outcome::Expired { version: 3 },
            Outcome::Written { version: 5 },
            Outcome::Deleted { version: 5 },
        ]
    );
    // Retries, here and on a replica that installed a snapshot, with different arguments:
    // each gets the first outcome and changes nothing.
    let mut stream = Vec::new();
    e.export_group(G1, &mut stream, 0).unwrap();
    let replica = make();
    replica
        .import_group(G1, &mut stream.as_slice(), b"6", 7)
        .unwrap();
    for target in [e, replica.as_ref()] {
        let retries = [
            once(1, timed_put("k", "retry", None, Condition::Always, at)),
            once(2, refresh("k", at + 2 * TTL, Condition::Always, at)),
            once(3, timed_put("gone", "retry", None, Condition::Always, at)),
            once(4, expire("gone", 3, at)),
            once(5, timed_put("del", "retry", None, Condition::Always, at)),
            once(6, timed_delete("del", Condition::Always, at)),
        ];
        let mut again = Vec::new();
        for (index, cmd) in (10..).zip(retries) {
            again.push(apply(target, G1, index, cmd));
        }
        assert_eq!(again, outcomes);
        assert_eq!(get(target, G1, "k"), Some(expiring(1, "v", at + TTL)));
        assert_eq!(get(target, G1, "gone"), None);
        assert_eq!(get(target, G1, "del"), None);
        assert_expiry_index_exact(target, G1);
    }
}
