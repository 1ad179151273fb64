//! Ledger rows in PostgreSQL's binary `COPY` format.
//!
//! A backfill writes one ledger row per event, so the ledger insert is on the hot path. `COPY
//! ... FROM STDIN (FORMAT binary)` skips the per-row work of `INSERT ... SELECT FROM UNNEST`
//! (array decoding, a tuple store) and takes about half the server time per row. The binary
//! format needs no escaping: text travels as its UTF-8 bytes, with a length in front.
//!
//! Format: <https://www.postgresql.org/docs/current/sql-copy.html#id-1.9.3.55.9.4>; array and
//! timestamp wire encodings: `array_send` and `timestamptz_send` in PostgreSQL's sources.

use super::Delivered;

/// The statement the bytes of [`deliveries`] feed.
pub(super) const DELIVERIES_COPY: &str = "COPY deliveries (model, event_id, row_key, event_name, \
     fingerprint, event_time, fbtrace_id, run_id) FROM STDIN (FORMAT binary)";

const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
/// `text`'s type OID, named in each array's header.
const TEXT_OID: u32 = 25;
/// Seconds from the Unix epoch to PostgreSQL's (2000-01-01 00:00:00 UTC).
const PG_EPOCH_OFFSET_SECS: i64 = 946_684_800;

/// The whole `COPY` stream for these ledger rows (the batches' rows in order): header, one
/// tuple each, trailer.
pub(super) fn deliveries(model: &str, run_id: i64, parts: &[&[Delivered]]) -> Vec<u8> {
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
    for d in parts.iter().flat_map(|p| p.iter()) {
        out.extend_from_slice(&8i16.to_be_bytes());
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
    }
    out.extend_from_slice(&(-1i16).to_be_bytes());
    out
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
        let bytes = deliveries("m", 7, &[&[row(&["k"], None)]]);
        let mut expect: Vec<u8> = Vec::new();
        expect.extend_from_slice(b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0");
        expect.extend_from_slice(&[0, 8]);
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
        let bytes = deliveries("model", 9, &[&rows[..2], &rows[2..]]);
        assert_eq!(bytes.len(), bytes.capacity());
    }

    #[test]
    fn before_the_postgres_epoch_is_negative() {
        assert_eq!(timestamptz(PG_EPOCH_OFFSET_SECS - 1), -1_000_000);
        assert_eq!(timestamptz(0), -PG_EPOCH_OFFSET_SECS * 1_000_000);
    }
}
