//! Cases for the expiry index and reads with a clock: what the expirer and readers see, and
//! the index through snapshot import and group drop.

use super::fixtures::*;
use super::MakeEngine;
use crate::{Command, Condition, Engine, GroupId, MetaKey, Outcome};

const TTL: u64 = 30_000;

/// Panics unless the expiry index of `group` holds exactly the deadlines of its records:
/// every record with a deadline listed under that deadline with its version, nothing else.
pub fn assert_expiry_index_exact(engine: &dyn Engine, group: GroupId) {
    let mut want: Vec<(u64, Vec<u8>, u64)> = dump(engine, group)
        .into_iter()
        .filter_map(|(k, r)| r.expires_at.map(|d| (d, k, r.version)))
        .collect();
    want.sort();
    let listed: Vec<(Vec<u8>, u64)> = want.iter().map(|(_, k, v)| (k.clone(), *v)).collect();
    assert_eq!(
        engine.expired(group, u64::MAX, usize::MAX).unwrap(),
        listed,
        "{group}: the index lists exactly the records with a deadline, earliest first"
    );
    assert_eq!(
        engine.next_deadline(group).unwrap(),
        want.first().map(|(d, _, _)| *d),
        "{group}: next deadline"
    );
    for (deadline, key, version) in &want {
        let due = |now| engine.expired(group, now, usize::MAX).unwrap();
        assert!(due(*deadline).contains(&(key.clone(), *version)));
        if let Some(before) = deadline.checked_sub(1) {
            assert!(
                !due(before).contains(&(key.clone(), *version)),
                "{group}: {key:?} indexed under an earlier deadline than {deadline}"
            );
        }
    }
}

pub fn expired_lists_due_keys_earliest_first_per_group(make: MakeEngine<'_>) {
    let e = make();
    let e = e.as_ref();
    let deadlines = [("c", 30), ("b", 10), ("d", 20), ("a", 10), ("p", 0)];
    for (i, (key, deadline)) in deadlines.iter().enumerate() {
        let at = (*deadline > 0).then_some(*deadline);
        apply(
            e,
            G1,
            i as u64 + 1,
            timed_put(key, "", at, Condition::Always, 0),
        );
    }
    apply(e, G2, 1, timed_put("g2", "", Some(5), Condition::Always, 0));
    apply(
        e,
        GMAX,
        1,
        timed_put("last", "", Some(1), Condition::Always, 0),
    );
    let keys = |now, limit| -> Vec<String> {
        e.expired(G1, now, limit)
            .unwrap()
            .into_iter()
            .map(|(k, _)| String::from_utf8(k).unwrap())
            .collect()
    };
    assert_eq!(keys(9, 10), Vec::<String>::new());
    assert_eq!(keys(10, 10), ["a", "b"], "ties ordered by key");
    assert_eq!(keys(25, 2), ["a", "b"], "at most `limit`");
    assert_eq!(keys(25, 10), ["a", "b", "d"]);
    assert_eq!(keys(u64::MAX, 10), ["a", "b", "d", "c"]);
    assert_eq!(keys(u64::MAX, 0), Vec::<String>::new());
    assert_eq!(
        e.expired(G1, 10, 1).unwrap(),
        vec![(b"a".to_vec(), 4)],
        "with versions"
    );
    assert_eq!(e.next_deadline(G1).unwrap(), Some(10));
    assert_eq!(e.next_deadline(G2).unwrap(), Some(5));
    assert_eq!(e.next_deadline(GMAX).unwrap(), Some(1));
    assert_eq!(e.next_deadline(GroupId(3)).unwrap(), None);
    assert_eq!(all_expiring(e, G2), [("g2".to_string(), 1)]);
    assert_eq!(all_expiring(e, GMAX), [("last".to_string(), 1)]);
    for g in [G1, G2, GMAX] {
        assert_expiry_index_exact(e, g);
    }
}

pub fn scan_with_a_clock_skips_expired_keys(make: MakeEngine<'_>) {
    let e = make();
    let e = e.as_ref();
    let at = NOW + TTL;
    apply(e, G1, 1, put("a", "permanent", Condition::Always));
    apply(
        e,
        G1,
        2,
        timed_put("b", &"x".repeat(500), Some(at), Condition::Always, NOW),
    );
    apply(
        e,
        G1,
        3,
        timed_put("c", "live", Some(at + 1), Condition::Always, NOW),
    );
    apply(
        e,
        G1,
        4,
        timed_put("d", "gone", Some(at), Condition::Always, NOW),
    );
    let keys = |after: Option<&[u8]>, limit, max_bytes, live_at| -> Vec<String> {
        e.scan(G1, b"", after, limit, max_bytes, live_at)
            .unwrap()
            .into_iter()
            .map(|(k, _)| String::from_utf8(k).unwrap())
            .collect()
    };
    assert_eq!(keys(None, 10, usize::MAX, None), ["a", "b", "c", "d"]);
    assert_eq!(
        keys(None, 10, usize::MAX, Some(at - 1)),
        ["a", "b", "c", "d"]
    );
    assert_eq!(keys(None, 10, usize::MAX, Some(at)), ["a", "c"]);
    assert_eq!(
        keys(Some(b"a"), 1, usize::MAX, Some(at)),
        ["c"],
        "skipped keys do not count toward the limit"
    );
    assert_eq!(
        keys(None, 10, 20, Some(at)),
        ["a", "c"],
        "nor toward the byte budget"
    );
    // Records come back with their deadlines.
    let rows = e.scan(G1, b"c", None, 10, usize::MAX, Some(at)).unwrap();
    assert_eq!(rows, vec![(b"c".to_vec(), expiring(3, "live", at + 1))]);
}

pub fn deadlines_travel_with_snapshots_and_rebuild_the_index(make: MakeEngine<'_>) {
    let at = NOW + TTL;
    let source = make();
    let s = source.as_ref();
    apply(s, G1, 1, put("permanent", "p", Condition::Always));
    apply(
        s,
        G1,
        2,
        timed_put("live", "l", Some(at), Condition::Always, NOW),
    );
    // Due but its expiry not applied yet: exported as is, and still expired on arrival.
    apply(
        s,
        G1,
        3,
        timed_put("due", "d", Some(NOW), Condition::Always, NOW - 1),
    );

    let target = make();
    let t = target.as_ref();
    // Stale data of the group with deadlines (must leave the index) and another group's.
    apply(
        t,
        G1,
        1,
        timed_put("stale", "s", Some(1), Condition::Always, 0),
    );
    apply(
        t,
        G1,
        2,
        timed_put("live", "old", Some(5), Condition::Always, 0),
    );
    apply(
        t,
        G2,
        1,
        timed_put("other", "o", Some(7), Condition::Always, 0),
    );

    let mut stream = Vec::new();
    s.export_group(G1, &mut stream, 0).unwrap();
    assert_eq!(
        t.import_group(G1, &mut stream.as_slice(), b"3", 4).unwrap(),
        3
    );
    assert_eq!(dump(t, G1), dump(s, G1));
    assert_eq!(get(t, G1, "due"), Some(expiring(3, "d", NOW)));
    assert_eq!(
        all_expiring(t, G1),
        [("due".to_string(), 3), ("live".to_string(), 2)]
    );
    assert_eq!(all_expiring(t, G2), [("other".to_string(), 1)]);
    for g in [G1, G2] {
        assert_expiry_index_exact(t, g);
    }
    assert!(
        !get(t, G1, "due").unwrap().live_at(NOW),
        "an expired key does not come back with a snapshot"
    );

    // The replica goes on like the source: the expiry entry after the snapshot removes it.
    for e in [s, t] {
        assert_eq!(
            apply(e, G1, 4, expire("due", 3, NOW)),
            Outcome::Expired { version: 3 }
        );
        assert_expiry_index_exact(e, G1);
    }
    let (mut a, mut b) = (Vec::new(), Vec::new());
    s.export_group(G1, &mut a, 0).unwrap();
    t.export_group(G1, &mut b, 0).unwrap();
    assert_eq!(a, b, "same data, same stream");
}

pub fn a_snapshot_from_before_deadlines_imports_as_permanent_keys(make: MakeEngine<'_>) {
    let e = make();
    let e = e.as_ref();
    apply(
        e,
        G1,
        1,
        timed_put("stale", "s", Some(1), Condition::Always, 0),
    );
    let old = snapshot_from_before_deadlines();
    assert_eq!(e.import_group(G1, &mut old.as_slice(), b"7", 8).unwrap(), 1);
    assert_eq!(get(e, G1, "k"), Some(record(7, "v")));
    assert_eq!(get(e, G1, "stale"), None);
    assert_expiry_index_exact(e, G1);
    assert_eq!(
        e.read_meta(G1, MetaKey::Applied).unwrap(),
        Some(b"7".to_vec())
    );
    // The session came along.
    let retry = Command::Once {
        client: 1,
        seq: 2,
        ack_below: 0,
        command: Box::new(put("k", "again", Condition::Always)),
    };
    assert_eq!(apply(e, G1, 8, retry), Outcome::Written { version: 7 });
    // Exported again, a group without deadlines gives the old frames back, followed by its
    // history: no rows, starting after the snapshot it came from.
    let mut again = Vec::new();
    e.export_group(G1, &mut again, 0).unwrap();
    let old_frames = &old[..old.len() - 13];
    assert_eq!(&again[..old_frames.len()], old_frames);
    assert_eq!(
        again[old_frames.len()],
        4,
        "the history start frame follows"
    );
    assert_eq!(
        again[old_frames.len() + 1..old_frames.len() + 9],
        8u64.to_le_bytes()
    );
}

pub fn dropping_a_group_clears_only_its_expiry_index(make: MakeEngine<'_>) {
    let e = make();
    let e = e.as_ref();
    for g in [G1, G2] {
        apply(
            e,
            g,
            1,
            timed_put("k", "v", Some(NOW), Condition::Always, 0),
        );
    }
    e.drop_group(G1).unwrap();
    assert_eq!(e.next_deadline(G1).unwrap(), None);
    assert_eq!(e.expired(G1, u64::MAX, 10).unwrap(), vec![]);
    assert_eq!(all_expiring(e, G2), [("k".to_string(), 1)]);
    // A group created again under the same id starts from nothing.
    apply(
        e,
        G1,
        1,
        timed_put("k", "v", Some(NOW + 1), Condition::Always, 0),
    );
    assert_eq!(e.next_deadline(G1).unwrap(), Some(NOW + 1));
    for g in [G1, G2] {
        assert_expiry_index_exact(e, g);
    }
}
