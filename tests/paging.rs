//! Paging as the real service does it: lists that interleave empty pages (`"value": []` with a
//! `nextLink`) with pages of items. A real mount must follow `nextLink` across them and list
//! everything, at the request count the emulator's page shape implies.

mod common;

use std::collections::BTreeSet;

use common::TestEnv;

/// Empty pages before each page of items, and after the last.
const EMPTY_PAGES: u32 = 2;

/// List requests for `items` items at 25 per page with [`EMPTY_PAGES`].
fn list_requests(items: u64) -> u64 {
    let pages = items.div_ceil(25).max(1);
    pages * (u64::from(EMPTY_PAGES) + 1) + u64::from(EMPTY_PAGES)
}

fn names_in(dir: &std::path::Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().into_string().expect("UTF-8"))
        .collect()
}

#[test]
fn listing_and_versions_cross_empty_pages() {
    let env = TestEnv::start();
    let mut expected = BTreeSet::new();
    for i in 0..59 {
        let name = format!("secret-{i:02}");
        env.vault().set_secret(&name, &format!("value {i}"));
        expected.insert(name);
    }
    let versions: BTreeSet<String> = (0..30)
        .map(|i| env.vault().set_secret("rotated", &format!("rotation {i}")))
        .collect();
    expected.insert("rotated".into());
    env.vault().set_empty_pages(EMPTY_PAGES);
    let m = env.mount(&["--no-startup-check", "--list-ttl", "1h"]);
    env.vault().reset_counters();

    assert_eq!(names_in(&m.path), expected, "all 60 secrets");
    let c = env.counters();
    assert_eq!(c.list_secrets, list_requests(60), "{c:?}");
    assert_eq!(c.list_secrets, 11, "3 pages of items, 8 empty ones");

    let listed = names_in(&m.path.join(".versions").join("rotated"));
    assert_eq!(listed, versions, "all 30 versions");
    let c = env.counters();
    assert_eq!(c.list_versions, list_requests(30), "{c:?}");
    assert_eq!(c.list_versions, 8, "2 pages of items, 6 empty ones");

    assert_eq!(m.read("secret-58").expect("read"), b"value 58");
    assert_eq!(m.read("rotated").expect("read"), b"rotation 29");
    let c = env.counters();
    assert_eq!(c.get_secret, 2, "{c:?}");
    assert_eq!(
        (c.list_secrets, c.list_versions),
        (11, 8),
        "listings were cached"
    );
    let statuses: Vec<u16> = env
        .vault()
        .requests()
        .iter()
        .filter(|r| r.status != 200)
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [401], "only the first request's challenge fails");
    assert_eq!(c.challenges, 1);
}
