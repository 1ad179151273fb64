//! Ledger rows in PostgreSQL's binary `COPY` format.
//!
//! A backfill writes one ledger row per event, so the ledger insert is on the hot path. `COPY
//! ... FROM STDIN (FORMAT binary)` skips the per-row work of `INSERT ... SELECT FROM UNNEST`
//! (array decoding, a tuple store) and takes about half the server time per row. The binary
//! format needs no escaping: text travels as its UTF-8 bytes, with a length in front.
//!
//! Format: <https://www.postgresql.org/docs/current/sql-copy.html#id-1.9.3.55.9.4>; array and
//! timestamp wire encodings: `array_send` and `timestamptz_send` in PostgreSQL's sources.
//!
//! The rows go in the order of the ledger's hash-index buckets. Each row's index entry lands
//! in the bucket its event id's hash picks, and with random ids every insert read a bucket
//! page nothing had touched lately; in bucket order the rows that share a bucket follow one
//! another and find its page in the CPU's caches.

use super::Delivered;

/// The statement the bytes of [`deliveries`] feed.
pub(super) const DELIVERIES_COPY: &str = "COPY deliveries (model, event_id, row_key, event_name, \
     fingerprint, event_time, fbtrace_id, run_id, generation) FROM STDIN (FORMAT binary)";

const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
/// `text`'s type OID, named in each array's header.
const TEXT_OID: u32 = 25;
/// Seconds from the Unix epoch to PostgreSQL's (2000-01-01 00:00:00 UTC).
const PG_EPOCH_OFFSET_SECS: i64 = 946_684_800;

/// The whole `COPY` stream for these ledger rows (the batches' rows in order): header, one
/// tuple each, trailer.
pub(super) fn deliveries(
    model: &str,
    run_id: i64,
    generation: i32,
    parts: &[&[Delivered]],
) -> Vec<u8> {
    // Sized exactly: a short estimate doubled the buffer (and copied megabytes) once or twice
    // per write.
    let size: usize = parts
        .iter()
        .flat_map(|p| p.iter())
        .map(|d| tuple_size(model, d))
        .sum();
    let mut out = Vec::with_capacity(19 + size + 2);
    out.extend_from_slice(SIGNATURE);
    out.extend_from_slice(&0i32.to_be_bytes()); // flags: no OIDs
    out.extend_from_slice(&0i32.to_be_bytes()); // no header extension
    let mut rows: Vec<(u32, &Delivered)> = parts
        .iter()
        .flat_map(|p| p.iter())
        .map(|d| (bucket_order(&d.event_id), d))
        .collect();
    rows.sort_unstable_by_key(|(order, _)| *order);
    for (_, d) in rows {
        out.extend_from_slice(&9i16.to_be_bytes());
        text(&mut out, model);
        text(&mut out, &d.event_id);
        text_array(&mut out, &d.row_key);
        text(&mut out, &d.event_name);
        text(&mut out, &d.fingerprint);
        field(&mut out, &timestamptz(d.event_time).to_be_bytes());
        match &d.fbtrace_id {
            Some(t) => text(&mut out, t),
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
        }
        field(&mut out, &run_id.to_be_bytes());
        field(&mut out, &generation.to_be_bytes());
    }
    out.extend_from_slice(&(-1i16).to_be_bytes());
    out
}

/// Where an event id's index entry goes, as a sort key: PostgreSQL's hash of the id with its
/// bits reversed. A hash index picks the bucket by the hash's low bits (as many as it has
/// buckets to tell apart), so ids sorted on the reversed bits come grouped by bucket whatever
/// the index's size. Only an order: a wrong hash would cost speed, never a ledger row.
pub(super) fn bucket_order(event_id: &str) -> u32 {
    pg_hash_bytes(event_id.as_bytes()).reverse_bits()
}

/// PostgreSQL's `hash_bytes` (Bob Jenkins' lookup3 as `src/common/hashfn.c` has it), which
/// `hashtext` applies to a text value under a deterministic collation such as the ledger's
/// "C". Written for a little-endian server, the byte order of every platform we build for.
fn pg_hash_bytes(k: &[u8]) -> u32 {
    let word = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let init = 0x9e37_79b9u32
        .wrapping_add(k.len() as u32)
        .wrapping_add(3_923_095);
    let (mut a, mut b, mut c) = (init, init, init);
    let mut rest = k;
    while rest.len() >= 12 {
        a = a.wrapping_add(word(&rest[0..4]));
        b = b.wrapping_add(word(&rest[4..8]));
        c = c.wrapping_add(word(&rest[8..12]));
        mix(&mut a, &mut b, &mut c);
        rest = &rest[12..];
    }
    // The tail: a takes bytes 0-3, b bytes 4-7, c bytes 8-10 shifted up one byte (its lowest
    // byte is reserved for the length in lookup3's design).
    for (i, &byte) in rest.iter().enumerate() {
        let byte = u32::from(byte);
        match i {
            0..=3 => a = a.wrapping_add(byte << (8 * i)),
            4..=7 => b = b.wrapping_add(byte << (8 * (i - 4))),
            _ => c = c.wrapping_add(byte << (8 * (i - 7))),
        }
    }
    final_mix(&mut a, &mut b, &mut c);
    c
}

fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(4);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(6);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(8);
    *b = b.wrapping_add(*a);
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(16);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(19);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(4);
    *b = b.wrapping_add(*a);
}

fn final_mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(14));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(11));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(25));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(16));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(4));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(14));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(24));
}

/// The bytes `deliveries` writes for one row.
fn tuple_size(model: &str, d: &Delivered) -> usize {
    let text = |s: &str| 4 + s.len();
    2 + text(model)
        + text(&d.event_id)
        + (4 + array_len(&d.row_key))
        + text(&d.event_name)
        + text(&d.fingerprint)
        + (4 + 8)
        + d.fbtrace_id.as_deref().map_or(4, text)
        + (4 + 8)
        + (4 + 4)
}

/// A field: its length, then its bytes.
fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&len32(bytes.len()).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn text(out: &mut Vec<u8>, s: &str) {
    field(out, s.as_bytes());
}

/// The length of a one-dimensional text array's binary form (an empty one has no dimension).
fn array_len(items: &[String]) -> usize {
    if items.is_empty() {
        12
    } else {
        20 + items.iter().map(|s| 4 + s.len()).sum::<usize>()
    }
}

/// A one-dimensional `text[]` without NULLs (a row key), as `array_send` writes it.
fn text_array(out: &mut Vec<u8>, items: &[String]) {
    let empty = items.is_empty();
    out.extend_from_slice(&len32(array_len(items)).to_be_bytes());
    out.extend_from_slice(&i32::from(!empty).to_be_bytes()); // dimensions
    out.extend_from_slice(&0i32.to_be_bytes()); // has NULLs
    out.extend_from_slice(&TEXT_OID.to_be_bytes());
    if empty {
        return;
    }
    out.extend_from_slice(&len32(items.len()).to_be_bytes());
    out.extend_from_slice(&1i32.to_be_bytes()); // lower bound
    for s in items {
        text(out, s);
    }
}

/// Microseconds since PostgreSQL's epoch, from Unix seconds.
fn timestamptz(unix_secs: i64) -> i64 {
    unix_secs
        .saturating_sub(PG_EPOCH_OFFSET_SECS)
        .saturating_mul(1_000_000)
}

/// A length field. Our values are ids, keys and names far below 2 GiB; a longer one could
/// not be stored by PostgreSQL anyway (1 GiB field limit), and saturating makes the server
/// reject the stream instead of misreading it.
fn len32(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(key: &[&str], trace: Option<&str>) -> Delivered {
        Delivered {
            row_key: key.iter().map(|s| s.to_string()).collect(),
            event_id: "e1".into(),
            event_name: "Lead".into(),
            event_time: 946_684_801,
            fingerprint: "fp".into(),
            fbtrace_id: trace.map(Into::into),
        }
    }

    #[test]
    fn one_tuple_layout() {
        let bytes = deliveries("m", 7, 3, &[&[row(&["k"], None)]]);
        let mut expect: Vec<u8> = Vec::new();
        expect.extend_from_slice(b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0");
        expect.extend_from_slice(&[0, 9]);
        expect.extend_from_slice(&[0, 0, 0, 1, b'm']);
        expect.extend_from_slice(&[0, 0, 0, 2, b'e', b'1']);
        // text[] {k}: length 25 = 20 header bytes + 4 + 1
        expect.extend_from_slice(&[0, 0, 0, 25, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 25]);
        expect.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, b'k']);
        expect.extend_from_slice(&[0, 0, 0, 4, b'L', b'e', b'a', b'd']);
        expect.extend_from_slice(&[0, 0, 0, 2, b'f', b'p']);
        // one second after 2000-01-01: 1,000,000 µs
        expect.extend_from_slice(&[0, 0, 0, 8, 0, 0, 0, 0, 0, 0x0f, 0x42, 0x40]);
        expect.extend_from_slice(&[0xff, 0xff, 0xff, 0xff]); // NULL fbtrace_id
        expect.extend_from_slice(&[0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 7]);
        expect.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 3]); // generation
        expect.extend_from_slice(&[0xff, 0xff]);
        assert_eq!(bytes, expect);
    }

    #[test]
    fn the_buffer_is_sized_exactly() {
        let rows = [
            row(&["k"], None),
            row(&["a", "bc"], Some("trace-1")),
            row(&[], Some("t")),
        ];
        let bytes = deliveries("model", 9, 1, &[&rows[..2], &rows[2..]]);
        assert_eq!(bytes.len(), bytes.capacity());
    }

    /// `SELECT s, hashtext(s)` on PostgreSQL 15: every tail length and a full block.
    #[test]
    fn the_hash_is_postgres_hashtext() {
        for (s, expect) in [
            ("", -1_477_818_771),
            ("a", 1_075_015_857),
            ("ab", 1_718_550_461),
            ("abc", -785_388_649),
            ("abcd", -393_934_804),
            ("abcdefghijk", -1_483_803_693),
            ("abcdefghijkl", -1_586_087_212),
            ("abcdefghijklm", 405_849_808),
            ("0123456789abcdef0123456789abcdef", -362_025_248),
            ("ü-é", -31_945_705),
            ("event-1234567890123456789012", 330_447_604),
        ] {
            assert_eq!(pg_hash_bytes(s.as_bytes()) as i32, expect, "{s:?}");
        }
    }

    #[test]
    fn rows_go_in_bucket_order_and_none_is_lost() {
        let ids: Vec<String> = (0..50).map(|i| format!("{i:032x}")).collect();
        let rows: Vec<Delivered> = ids
            .iter()
            .map(|id| Delivered {
                event_id: id.clone(),
                ..row(&["k"], None)
            })
            .collect();
        let bytes = deliveries("m", 1, 0, &[&rows[..20], &rows[20..]]);
        // Each tuple: count, model (4+1), then the event id (4+32).
        let mut found = Vec::new();
        let mut at = 19;
        let tuple = 2 + 5 + 36 + 29 + 8 + 6 + 12 + 4 + 12 + 8;
        while found.len() < rows.len() {
            found.push(String::from_utf8(bytes[at + 11..at + 43].to_vec()).expect("utf-8"));
            at += tuple;
        }
        let orders: Vec<u32> = found.iter().map(|id| bucket_order(id)).collect();
        assert!(orders.windows(2).all(|w| w[0] <= w[1]));
        found.sort();
        assert_eq!(found, ids);
    }

    #[test]
    fn before_the_postgres_epoch_is_negative() {
        assert_eq!(timestamptz(PG_EPOCH_OFFSET_SECS - 1), -1_000_000);
        assert_eq!(timestamptz(0), -PG_EPOCH_OFFSET_SECS * 1_000_000);
    }
}
