//! A small per-thread memo of recent results for fields whose values repeat across rows.
//!
//! Countries, states, cities, first and last names and genders take few distinct
//! values in a customer table, so the same input is normalized and hashed again and again. A
//! direct-mapped table per field remembers the last result for each slot: a hit costs one
//! short hash and a compare instead of normalization and SHA-256; a miss costs the same plus
//! a copy. It holds at most `SLOTS` short inputs per field, lives only in memory, and the
//! values it returns are the ones the normalizer gave for the same input (these fields'
//! rules do not depend on the row's other values, and zip's only on whether the row's
//! country is the US, which picks one of its two tables).

use super::{DropReason, HexDigest, PiiField};
use std::cell::RefCell;

/// Inputs longer than this are not memoized (long values rarely repeat).
pub(super) const MAX_INPUT: usize = 30;
const SLOTS: usize = 512;

/// Fields whose result depends on the input alone and whose values repeat. Email, phone,
/// external_id and birth date (nearly unique per person) are left out; zip has [`zip`].
pub(super) fn memoized(field: PiiField) -> Option<usize> {
    match field {
        PiiField::Fn => Some(0),
        PiiField::Ln => Some(1),
        PiiField::Ct => Some(2),
        PiiField::St => Some(3),
        PiiField::Country => Some(4),
        PiiField::Ge => Some(5),
        _ => None,
    }
}

/// The table for zip codes: a zip's result depends on the input and on whether the country
/// in context is the US (a US value keeps its first 5 digits), so each case has its own.
pub(super) fn zip(us: bool) -> usize {
    6 + usize::from(us)
}
const TABLES: usize = 8;

#[derive(Clone, Copy)]
struct Entry {
    len: u8,
    input: [u8; MAX_INPUT],
    result: Result<HexDigest, DropReason>,
}

thread_local! {
    static MEMO: RefCell<Vec<Option<Entry>>> = const { RefCell::new(Vec::new()) };
}

/// The memoized result for `input` of the field in `table`, or `compute`'s (then remembered).
/// `input` must be at most [`MAX_INPUT`] bytes.
pub(super) fn get_or_insert(
    table: usize,
    input: &str,
    compute: impl FnOnce() -> Result<HexDigest, DropReason>,
) -> Result<HexDigest, DropReason> {
    let bytes = input.as_bytes();
    let slot = table * SLOTS + (xxhash_rust::xxh3::xxh3_64(bytes) as usize % SLOTS);
    let hit = MEMO.with(|m| match m.borrow().get(slot) {
        Some(Some(e)) if e.input[..usize::from(e.len)] == *bytes => Some(e.result),
        _ => None,
    });
    if let Some(result) = hit {
        return result;
    }
    let result = compute();
    let mut entry = Entry {
        len: bytes.len() as u8,
        input: [0; MAX_INPUT],
        result,
    };
    entry.input[..bytes.len()].copy_from_slice(bytes);
    MEMO.with(|m| {
        let mut m = m.borrow_mut();
        if m.is_empty() {
            m.resize(TABLES * SLOTS, None);
        }
        m[slot] = Some(entry);
    });
    result
}
