//! Damaging files the way failing disks do, for tests of what notices.

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

/// SQLite's default page size, which every Tributary database uses.
const SQLITE_PAGE: u64 = 4096;

/// Overwrites every page of the SQLite file at `path` after the first (the header and the
/// start of the schema, so that the file still opens) with garbage, and syncs it.
///
/// # Panics
/// When the file cannot be written, or holds fewer than `min_pages` pages (the damage should
/// reach the rows a test reads).
pub fn overwrite_all_but_the_first_page(path: &Path, min_pages: u64) {
    let len = std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .len();
    assert!(
        len > min_pages * SQLITE_PAGE,
        "{} spans more than {min_pages} pages: {len} bytes",
        path.display()
    );
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    f.seek(SeekFrom::Start(SQLITE_PAGE)).unwrap();
    f.write_all(&vec![0xA5; (len - SQLITE_PAGE) as usize])
        .unwrap();
    f.sync_all().unwrap();
}
