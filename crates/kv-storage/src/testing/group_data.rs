//! Cases for whole-group operations: snapshot export/import, drop, listing.

use super::fixtures::*;
use super::MakeEngine;
use crate::{Condition, GroupId, MetaKey, Op, Outcome};

pub fn export_import_round_trip(make: MakeEngine<'_>) {
    let source = make();
    fill(source.as_ref(), G1, 1, &["a", "b", "c"]);
    apply(source.as_ref(), G1, 10, delete("b", Condition::Always));
    apply(source.as_ref(), G1, 11, put("d", "", Condition::Always));
    fill(source.as_ref(), G2, 1, &["not-exported"]);

    let mut stream = Vec::new();
    let summary = source.export_group(G1, &mut stream, 0).unwrap();
    assert_eq!(summary.applied, Some(11u64.to_le_bytes().to_vec()));
    assert_eq!(summary.keys, 3);
    assert_eq!(summary.bytes, stream.len() as u64);

    // The target holds stale data for the group (replaced) and another group (untouched).
    let target = make();
    fill(target.as_ref(), G1, 1, &["a", "stale"]);
    fill(target.as_ref(), G2, 1, &["kept"]);
    append(target.as_ref(), G1, 1..=3);
    let imported = target
        .import_group(G1, &mut stream.as_slice(), b"snapshot-11", 12)
        .unwrap();
    assert_eq!(imported, 3);

    assert_eq!(dump(target.as_ref(), G1), dump(source.as_ref(), G1));
    assert_eq!(
        dump(target.as_ref(), G1),
        vec![
            (b"a".to_vec(), record(1, "g1:a")),
            (b"c".to_vec(), record(3, "g1:c")),
            (b"d".to_vec(), record(11, "")),
        ],
        "versions survive the round trip"
    );
    assert_eq!(
        target.read_meta(G1, MetaKey::Applied).unwrap(),
        Some(b"snapshot-11".to_vec())
    );
    assert_eq!(
        scan_keys(target.as_ref(), G2, "", None, usize::MAX),
        ["kept"]
    );
    assert_eq!(
        target.log_bounds(G1).unwrap(),
        Some((1, 3)),
        "importing replaces key/value data only, not the log"
    );

    // The stream is self-contained: exporting the target gives the same bytes.
    let mut again = Vec::new();
    target.export_group(G1, &mut again, 0).unwrap();
    assert_eq!(again, stream);
}

pub fn export_of_empty_group_imports_as_empty(make: MakeEngine<'_>) {
    let source = make();
    let mut stream = Vec::new();
    let summary = source.export_group(G1, &mut stream, 0).unwrap();
    assert_eq!(summary.applied, None);
    assert_eq!(summary.keys, 0);
    assert_eq!(summary.bytes, stream.len() as u64);

    let target = make();
    fill(target.as_ref(), G1, 1, &["a", "b"]);
    fill(target.as_ref(), G2, 1, &["a"]);
    let imported = target
        .import_group(G1, &mut stream.as_slice(), b"empty", 1)
        .unwrap();
    assert_eq!(imported, 0);
    assert_eq!(dump(target.as_ref(), G1), vec![]);
    assert_eq!(
        target.read_meta(G1, MetaKey::Applied).unwrap(),
        Some(b"empty".to_vec())
    );
    assert_eq!(scan_keys(target.as_ref(), G2, "", None, usize::MAX), ["a"]);
}

pub fn import_of_corrupt_stream_changes_nothing(make: MakeEngine<'_>) {
    let source = make();
    fill(source.as_ref(), G1, 1, &["x", "y", "z"]);
    let mut stream = Vec::new();
    source.export_group(G1, &mut stream, 0).unwrap();

    let target = make();
    fill(target.as_ref(), G1, 1, &["a", "b"]);
    let before = dump(target.as_ref(), G1);
    let applied_before = target.read_meta(G1, MetaKey::Applied).unwrap();
    assert!(applied_before.is_some());

    let mut flipped = stream.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x01;
    let mut bad_checksum = stream.clone();
    let last = bad_checksum.len() - 1;
    bad_checksum[last] ^= 0x01;
    let corrupt: [(&str, Vec<u8>); 5] = [
        ("a flipped byte in a record", flipped),
        ("a wrong checksum", bad_checksum),
        ("a truncated stream", stream[..stream.len() - 6].to_vec()),
        ("a stream cut after the magic", stream[..8].to_vec()),
        ("a missing magic", b"NOTASNAP".to_vec()),
    ];
    for (what, bytes) in corrupt {
        let result = target.import_group(G1, &mut bytes.as_slice(), b"must-not-appear", 99);
        assert!(result.is_err(), "{what} must be refused");
        assert_eq!(dump(target.as_ref(), G1), before, "{what} changed the data");
        assert_eq!(
            target.read_meta(G1, MetaKey::Applied).unwrap(),
            applied_before,
            "{what} changed Applied"
        );
    }

    // The engine is still usable afterwards.
    target
        .import_group(G1, &mut stream.as_slice(), b"good", 4)
        .unwrap();
    assert_eq!(
        scan_keys(target.as_ref(), G1, "", None, 10),
        ["x", "y", "z"]
    );
}

pub fn drop_group_removes_only_that_group(make: MakeEngine<'_>) {
    let e = make();
    let e = e.as_ref();
    let neighbours = [GroupId(0), G2, GMAX];
    for g in [G1].iter().chain(&neighbours) {
        append(e, *g, 1..=3);
        write_one(
            e,
            *g,
            Op::SetMeta {
                key: MetaKey::Vote,
                value: b"vote".to_vec(),
            },
        );
        fill(e, *g, 4, &["k1", "k2"]);
    }

    e.drop_group(G1).unwrap();
    assert_eq!(e.log_bounds(G1).unwrap(), None);
    for key in MetaKey::ALL {
        assert_eq!(e.read_meta(G1, key).unwrap(), None);
    }
    assert_eq!(dump(e, G1), vec![]);
    assert_eq!(e.groups().unwrap(), neighbours);
    for g in neighbours {
        assert_eq!(e.log_bounds(g).unwrap(), Some((1, 3)), "{g}");
        assert_eq!(
            e.read_meta(g, MetaKey::Vote).unwrap(),
            Some(b"vote".to_vec())
        );
        assert_eq!(
            e.read_meta(g, MetaKey::Applied).unwrap(),
            Some(b"filled".to_vec())
        );
        assert_eq!(scan_keys(e, g, "", None, 10), ["k1", "k2"], "{g}");
    }

    // The last group id has no successor to bound its range.
    e.drop_group(GMAX).unwrap();
    assert_eq!(dump(e, GMAX), vec![]);
    assert_eq!(e.groups().unwrap(), [GroupId(0), G2]);

    // Dropping a group that does not exist is fine; a dropped group can be recreated.
    e.drop_group(GroupId(42)).unwrap();
    assert_eq!(
        apply(e, G1, 9, put("k1", "new", Condition::Absent)),
        Outcome::Written { version: 9 }
    );
}

pub fn groups_lists_groups_with_metadata(make: MakeEngine<'_>) {
    let e = make();
    let e = e.as_ref();
    assert_eq!(e.groups().unwrap(), vec![]);

    // A log alone does not make a hosted group; metadata does.
    append(e, GroupId(5), 1..=2);
    assert_eq!(e.groups().unwrap(), vec![]);

    for g in [GroupId(3), GMAX, G1] {
        for key in MetaKey::ALL {
            write_one(
                e,
                g,
                Op::SetMeta {
                    key,
                    value: Vec::new(),
                },
            );
        }
    }
    apply(e, GroupId(0), 1, put("k", "v", Condition::Always));
    assert_eq!(
        e.groups().unwrap(),
        vec![GroupId(0), G1, GroupId(3), GMAX],
        "sorted, once each, Applied counts"
    );
}

pub fn sessions_travel_with_snapshots(make: MakeEngine<'_>) {
    let cas = |seq| crate::Command::Once {
        client: 42,
        seq,
        ack_below: 1,
        command: Box::new(put("k", "new", Condition::Version(1))),
    };
    let source = make();
    apply(source.as_ref(), G1, 1, put("k", "old", Condition::Always));
    assert_eq!(
        apply(source.as_ref(), G1, 2, cas(1)),
        Outcome::Written { version: 2 }
    );
    let mut stream = Vec::new();
    source.export_group(G1, &mut stream, 0).unwrap();

    let target = make();
    target
        .import_group(G1, &mut stream.as_slice(), b"applied", 10)
        .unwrap();
    // A retry reaching the replica restored from the snapshot still gets the first outcome.
    assert_eq!(
        apply(target.as_ref(), G1, 3, cas(1)),
        Outcome::Written { version: 2 }
    );
    assert_eq!(get(target.as_ref(), G1, "k"), Some(record(2, "new")));
    // Dropping the group forgets its sessions.
    target.drop_group(G1).unwrap();
    apply(target.as_ref(), G1, 4, put("k", "old", Condition::Always));
    assert_eq!(
        apply(
            target.as_ref(),
            G1,
            5,
            crate::Command::Once {
                client: 42,
                seq: 1,
                ack_below: 1,
                command: Box::new(put("k", "new", Condition::Version(4))),
            }
        ),
        Outcome::Written { version: 5 }
    );
}
