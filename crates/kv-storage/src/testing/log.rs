//! Cases for the Raft log and metadata: append, read, bounds, truncate, purge, per group.

use super::fixtures::*;
use super::MakeEngine;
use crate::{GroupId, MetaKey, Op, WriteBatch};

pub fn log_append_read_and_bounds(make: MakeEngine<'_>) {
    let e = make();
    let e = e.as_ref();
    assert_eq!(e.log_bounds(G1).unwrap(), None);
    assert_eq!(e.read_log(G1, 0, u64::MAX).unwrap(), vec![]);

    append(e, G1, 1..=5);
    assert_eq!(e.log_bounds(G1).unwrap(), Some((1, 5)));
    assert_eq!(e.read_log(G1, 0, u64::MAX).unwrap(), entries(G1, 1..=5));
    assert_eq!(
        e.read_log(G1, 2, 4).unwrap(),
        entries(G1, 2..4),
        "to is exclusive"
    );
    assert_eq!(e.read_log(G1, 4, 4).unwrap(), vec![]);
    assert_eq!(
        e.read_log(G1, 4, 2).unwrap(),
        vec![],
        "an empty range is not an error"
    );
    assert_eq!(e.read_log(G1, 6, 10).unwrap(), vec![]);

    // Appending at an existing index replaces the entry.
    let batch = WriteBatch::new(G1, true).op(Op::AppendLog {
        entries: vec![(3, b"replaced".to_vec())],
    });
    e.write(&[batch]).unwrap();
    assert_eq!(
        e.read_log(G1, 3, 4).unwrap(),
        vec![(3, b"replaced".to_vec())]
    );
    assert_eq!(e.log_bounds(G1).unwrap(), Some((1, 5)));

    // A single entry is both bounds.
    append(e, G2, [7]);
    assert_eq!(e.log_bounds(G2).unwrap(), Some((7, 7)));
}

pub fn log_truncate_and_purge_leave_no_holes(make: MakeEngine<'_>) {
    let e = make();
    let e = e.as_ref();
    append(e, G1, 1..=10);

    write_one(e, G1, Op::TruncateLog { from: 8 });
    assert_eq!(e.log_bounds(G1).unwrap(), Some((1, 7)));
    assert_eq!(e.read_log(G1, 0, u64::MAX).unwrap(), entries(G1, 1..=7));

    write_one(e, G1, Op::PurgeLog { through: 3 });
    assert_eq!(e.log_bounds(G1).unwrap(), Some((4, 7)));
    assert_eq!(e.read_log(G1, 0, u64::MAX).unwrap(), entries(G1, 4..=7));

    // Truncate and re-append in one batch, as a follower overwriting a conflicting suffix.
    let batch = WriteBatch::new(G1, true)
        .op(Op::TruncateLog { from: 6 })
        .op(Op::AppendLog {
            entries: vec![(6, b"new6".to_vec())],
        });
    e.write(&[batch]).unwrap();
    assert_eq!(e.log_bounds(G1).unwrap(), Some((4, 6)));
    assert_eq!(
        e.read_log(G1, 0, u64::MAX).unwrap(),
        vec![(4, entry(G1, 4)), (5, entry(G1, 5)), (6, b"new6".to_vec())]
    );

    // Out-of-range truncate and purge are no-ops.
    write_one(e, G1, Op::TruncateLog { from: 100 });
    write_one(e, G1, Op::PurgeLog { through: 1 });
    assert_eq!(e.log_bounds(G1).unwrap(), Some((4, 6)));

    // Purging everything empties the log; appending continues after it.
    write_one(e, G1, Op::PurgeLog { through: 6 });
    assert_eq!(e.log_bounds(G1).unwrap(), None);
    append(e, G1, 7..=8);
    assert_eq!(e.log_bounds(G1).unwrap(), Some((7, 8)));

    // Truncating from 0 removes everything.
    write_one(e, G1, Op::TruncateLog { from: 0 });
    assert_eq!(e.log_bounds(G1).unwrap(), None);
}

pub fn log_is_isolated_per_group(make: MakeEngine<'_>) {
    let e = make();
    let e = e.as_ref();
    let groups = [GroupId(0), G1, G2, GroupId(u64::MAX - 1), GMAX];
    for g in groups {
        append(e, g, 1..=5);
    }
    write_one(e, G1, Op::TruncateLog { from: 2 });
    write_one(e, G2, Op::PurgeLog { through: 4 });
    write_one(e, GMAX, Op::TruncateLog { from: 0 });
    write_one(e, GroupId(0), Op::PurgeLog { through: u64::MAX });

    assert_eq!(e.log_bounds(GroupId(0)).unwrap(), None);
    assert_eq!(e.log_bounds(G1).unwrap(), Some((1, 1)));
    assert_eq!(e.log_bounds(G2).unwrap(), Some((5, 5)));
    assert_eq!(e.log_bounds(GroupId(u64::MAX - 1)).unwrap(), Some((1, 5)));
    assert_eq!(e.log_bounds(GMAX).unwrap(), None);
    assert_eq!(
        e.read_log(GroupId(u64::MAX - 1), 0, u64::MAX).unwrap(),
        entries(GroupId(u64::MAX - 1), 1..=5),
        "entries carry their own group's bytes"
    );
    assert_eq!(e.read_log(GroupId(3), 0, u64::MAX).unwrap(), vec![]);
}

pub fn meta_set_and_read(make: MakeEngine<'_>) {
    let e = make();
    let e = e.as_ref();
    for key in MetaKey::ALL {
        assert_eq!(e.read_meta(G1, key).unwrap(), None);
    }
    for key in MetaKey::ALL {
        write_one(
            e,
            G1,
            Op::SetMeta {
                key,
                value: key.name().as_bytes().to_vec(),
            },
        );
    }
    for key in MetaKey::ALL {
        assert_eq!(
            e.read_meta(G1, key).unwrap(),
            Some(key.name().as_bytes().to_vec())
        );
        assert_eq!(
            e.read_meta(G2, key).unwrap(),
            None,
            "other groups see nothing"
        );
    }

    // Overwrite; an empty value is a value, not an absence.
    write_one(
        e,
        G1,
        Op::SetMeta {
            key: MetaKey::Vote,
            value: Vec::new(),
        },
    );
    assert_eq!(e.read_meta(G1, MetaKey::Vote).unwrap(), Some(Vec::new()));
    write_one(
        e,
        GMAX,
        Op::SetMeta {
            key: MetaKey::Vote,
            value: b"last".to_vec(),
        },
    );
    assert_eq!(
        e.read_meta(GMAX, MetaKey::Vote).unwrap(),
        Some(b"last".to_vec())
    );
    assert_eq!(e.read_meta(G1, MetaKey::Vote).unwrap(), Some(Vec::new()));
}
