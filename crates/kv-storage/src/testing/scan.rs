//! Cases for prefix scans: order, `after`, `limit`, group isolation.

use super::fixtures::*;
use super::MakeEngine;
use crate::{Condition, GroupId};

pub fn scan_prefix_after_limit_sorted(make: MakeEngine<'_>) {
    let e = make();
    let e = e.as_ref();
    // Written out of order; scans return them sorted.
    fill(
        e,
        G1,
        1,
        &["b/2", "a", "b/1", "c", "b/3", "b", "ba", "b/10"],
    );

    assert_eq!(
        scan_keys(e, G1, "", None, usize::MAX),
        ["a", "b", "b/1", "b/10", "b/2", "b/3", "ba", "c"]
    );
    assert_eq!(
        scan_keys(e, G1, "b/", None, usize::MAX),
        ["b/1", "b/10", "b/2", "b/3"]
    );
    assert_eq!(
        scan_keys(e, G1, "b", None, usize::MAX),
        ["b", "b/1", "b/10", "b/2", "b/3", "ba"],
        "the prefix itself is a match"
    );
    assert_eq!(scan_keys(e, G1, "b/", None, 2), ["b/1", "b/10"]);
    assert_eq!(scan_keys(e, G1, "b/", None, 0), Vec::<String>::new());
    assert_eq!(
        scan_keys(e, G1, "b/", Some("b/10"), usize::MAX),
        ["b/2", "b/3"],
        "after is exclusive"
    );
    assert_eq!(scan_keys(e, G1, "b/", Some("b/10"), 1), ["b/2"]);
    assert_eq!(
        scan_keys(e, G1, "b/", Some("b/15"), usize::MAX),
        ["b/2", "b/3"],
        "after need not be a stored key"
    );
    assert_eq!(
        scan_keys(e, G1, "b/", Some("a"), usize::MAX),
        ["b/1", "b/10", "b/2", "b/3"],
        "after before the prefix range changes nothing"
    );
    assert_eq!(
        scan_keys(e, G1, "b/", Some("c"), usize::MAX),
        Vec::<String>::new(),
        "after past the prefix range leaves nothing"
    );
    assert_eq!(
        scan_keys(e, G1, "d", None, usize::MAX),
        Vec::<String>::new()
    );
    assert_eq!(scan_keys(e, G1, "", Some("ba"), usize::MAX), ["c"]);

    // Paging with `after` visits every key once.
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = scan_keys(e, G1, "", after.as_deref(), 3);
        if page.is_empty() {
            break;
        }
        after = page.last().cloned();
        paged.extend(page);
    }
    assert_eq!(paged, scan_keys(e, G1, "", None, usize::MAX));

    // Records come back whole.
    let got = e.scan(G1, b"c", None, 10, usize::MAX, None).unwrap();
    assert_eq!(got, vec![(b"c".to_vec(), record(4, "g1:c"))]);
}

pub fn scan_is_isolated_per_group(make: MakeEngine<'_>) {
    let e = make();
    let e = e.as_ref();
    fill(e, GroupId(0), 1, &["a", "x"]);
    fill(e, G1, 1, &["b", "y"]);
    fill(e, G2, 1, &["c", "z"]);
    fill(e, GMAX, 1, &["d", "w"]);
    assert_eq!(scan_keys(e, GroupId(0), "", None, usize::MAX), ["a", "x"]);
    assert_eq!(scan_keys(e, G1, "", None, usize::MAX), ["b", "y"]);
    assert_eq!(scan_keys(e, G1, "", Some("b"), usize::MAX), ["y"]);
    assert_eq!(
        scan_keys(e, G1, "z", None, usize::MAX),
        Vec::<String>::new()
    );
    assert_eq!(scan_keys(e, G2, "", None, usize::MAX), ["c", "z"]);
    assert_eq!(scan_keys(e, GMAX, "", None, usize::MAX), ["d", "w"]);
    assert_eq!(
        scan_keys(e, GroupId(3), "", None, usize::MAX),
        Vec::<String>::new()
    );
    assert_eq!(get(e, G1, "a"), None);
    assert_eq!(get(e, G1, "b"), Some(record(1, "g1:b")));
}

pub fn scan_stops_at_the_byte_budget_but_returns_one_row(make: MakeEngine<'_>) {
    let e = make();
    let e = e.as_ref();
    // Each row: a 1-byte key and a 99-byte value: 100 bytes.
    for (i, key) in ["a", "b", "c", "d"].into_iter().enumerate() {
        apply(
            e,
            G1,
            i as u64 + 1,
            put(key, &"v".repeat(99), Condition::Always),
        );
    }
    let keys = |max_bytes: usize| -> Vec<String> {
        e.scan(G1, b"", None, usize::MAX, max_bytes, None)
            .unwrap()
            .into_iter()
            .map(|(k, _)| String::from_utf8(k).unwrap())
            .collect()
    };
    assert_eq!(
        keys(250),
        ["a", "b", "c"],
        "the row that reaches the budget is included"
    );
    assert_eq!(
        keys(200),
        ["a", "b"],
        "a row that reaches the budget exactly ends the scan"
    );
    assert_eq!(
        keys(10),
        ["a"],
        "one row even when it alone is over the budget"
    );
    assert_eq!(keys(0), ["a"]);
    assert_eq!(keys(usize::MAX), ["a", "b", "c", "d"]);
    assert_eq!(
        keys(401),
        ["a", "b", "c", "d"],
        "short of the budget: no more rows"
    );
    let page = e.scan(G1, b"", Some(b"a"), 2, 150, None).unwrap();
    assert_eq!(page.len(), 2, "the tighter of limit and budget wins");
    let page = e.scan(G1, b"", Some(b"a"), 3, 150, None).unwrap();
    assert_eq!(page.len(), 2);
}
