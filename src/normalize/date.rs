//! db: date of birth as `YYYYMMDD`.
//!
//! Meta: "YYYYMMDD; a range of month, day and year combinations, with or without punctuation;
//! year 1900–current, month 01–12, day 01–31" [D-cust]. Policy row "db": a SQL date converts
//! directly; text accepts ISO, `M/D/YYYY`, `D.M.YYYY` and similar; impossible dates are rejected.
//!
//! Text forms accepted (separators `-` `/` `.` `_` `,` space and Unicode dashes, mixed allowed):
//! * `YYYY-MM-DD` (ISO order, any separator) and `YYYYMMDD`;
//! * `A/B/YYYY`: month first when ambiguous (Meta's own example `2/16/1997` is M/D/Y), except
//!   that dots alone mean day first (`16.2.1997`, the European convention); an order that only
//!   one reading allows (`16/2/1997`, `2/16/1997`) is read that way;
//! * month names in English, full or 3-letter (`16 Feb 1997`, `February 16, 1997`,
//!   `1997-Feb-16`, `16th February 1997`);
//! * `1997年2月16日`-style labelled dates (年/月/日, 년/월/일), in any order;
//! * any of the above followed by a time (`T10:00:00Z`, ` 10:00`, ` 10:00 PM`), which is
//!   ignored: the date is taken as written, without time-zone conversion.
//!
//! Rejected: 2-digit years (ambiguous century), years before 1900 or after the current year,
//! impossible dates (Feb 30, Feb 29 1900), a year-day-month order, and free text around a date
//! ("Born: 12-31-1990", "2/16/1997 (mm/dd/yyyy)") — we drop rather than guess (§10). The
//! Parameter Builder instead takes the first three numbers of any text and allows 1800–next year.

use super::DropReason;
use chrono::{Datelike, NaiveDate, Utc};
use std::sync::atomic::{AtomicI32, Ordering};

/// The current (UTC) year. Cached: the clock is read again only for a date in or after the
/// cached year, where the answer matters.
fn year_allowed(y: i32) -> bool {
    static CACHED: AtomicI32 = AtomicI32::new(0);
    if y < CACHED.load(Ordering::Relaxed) {
        return true;
    }
    let now = current_year();
    CACHED.fetch_max(now, Ordering::Relaxed);
    y <= now
}

fn current_year() -> i32 {
    Utc::now().year()
}

fn format(d: NaiveDate) -> Result<String, DropReason> {
    if d.year() < 1900 || !year_allowed(d.year()) {
        return Err(DropReason::InvalidDate);
    }
    let mut s = String::with_capacity(8);
    let (y, m, dd) = (d.year() as u32, d.month(), d.day());
    for v in [
        y / 1000,
        y / 100 % 10,
        y / 10 % 10,
        y % 10,
        m / 10,
        m % 10,
        dd / 10,
        dd % 10,
    ] {
        s.push((b'0' + v as u8) as char);
    }
    Ok(s)
}

fn ymd(y: u32, m: u32, d: u32) -> Result<String, DropReason> {
    let d = NaiveDate::from_ymd_opt(y as i32, m, d).ok_or(DropReason::InvalidDate)?;
    format(d)
}

/// A SQL `date` (or the date of a timestamp).
pub(super) fn from_date(d: NaiveDate) -> Result<String, DropReason> {
    format(d)
}

#[derive(Clone, Copy, Debug)]
enum Comp {
    /// value, number of digits, has an ordinal suffix (16th)
    Num(u32, usize, bool),
    Month(u32),
}

const MONTHS: [(&str, u32); 24] = [
    ("jan", 1),
    ("january", 1),
    ("feb", 2),
    ("february", 2),
    ("mar", 3),
    ("march", 3),
    ("apr", 4),
    ("april", 4),
    ("may", 5),
    ("jun", 6),
    ("june", 6),
    ("jul", 7),
    ("july", 7),
    ("aug", 8),
    ("august", 8),
    ("sep", 9),
    ("sept", 9),
    ("september", 9),
    ("oct", 10),
    ("october", 10),
    ("nov", 11),
    ("november", 11),
    ("dec", 12),
    ("december", 12),
];

fn month(word: &str) -> Option<u32> {
    MONTHS
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(word))
        .map(|&(_, m)| m)
}

fn is_sep(c: char) -> bool {
    matches!(
        c,
        '-' | '/' | '.' | '_' | ',' | ' ' | '\u{2010}'..='\u{2015}' | '\u{2212}'
    ) || c.is_whitespace()
}

/// Text → `YYYYMMDD`.
pub(super) fn from_text(t: &str) -> Result<String, DropReason> {
    // The common shape first: ISO `YYYY-MM-DD`, as SQL writes a date.
    if let [y1, y2, y3, y4, b'-', m1, m2, b'-', d1, d2] = *t.as_bytes() {
        let digits = [y1, y2, y3, y4, m1, m2, d1, d2];
        if digits.iter().all(u8::is_ascii_digit) {
            let n = |ds: &[u8]| {
                ds.iter()
                    .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'))
            };
            return ymd(n(&digits[..4]), n(&digits[4..6]), n(&digits[6..]));
        }
    }
    if t.contains(['年', '月', '日', '년', '월', '일']) {
        return labelled(t);
    }
    // Dates are short: work on a small stack buffer of chars.
    let mut buf = ['\0'; 64];
    let mut len = 0;
    for c in t.chars() {
        if len == buf.len() {
            return Err(DropReason::InvalidDate);
        }
        buf[len] = c;
        len += 1;
    }
    let chars = &buf[..len];
    let mut i = 0;
    // YYYYMMDD, optionally with a time.
    if chars.len() >= 8
        && chars[..8].iter().all(char::is_ascii_digit)
        && (chars.len() == 8 || !chars[8].is_ascii_digit())
    {
        if !is_time(&chars[8..]) {
            return Err(DropReason::InvalidDate);
        }
        let v = |a: usize, b: usize| {
            chars[a..b]
                .iter()
                .fold(0u32, |acc, c| acc * 10 + c.to_digit(10).unwrap_or(0))
        };
        return ymd(v(0, 4), v(4, 6), v(6, 8));
    }
    let mut comps: [Option<Comp>; 3] = [None; 3];
    let mut dotted = [false; 2];
    for k in 0..3 {
        if k > 0 {
            // Separator run (may be empty between a number and a month name: "16Feb1997").
            let start = i;
            while i < chars.len() && is_sep(chars[i]) {
                i += 1;
            }
            let sep = &chars[start..i];
            if sep.len() > 3 {
                return Err(DropReason::InvalidDate);
            }
            dotted[k - 1] = sep.contains(&'.') && sep.iter().all(|&c| c == '.' || c == ' ');
            let prev_num = matches!(comps[k - 1], Some(Comp::Num(..)));
            let next_digit = chars.get(i).is_some_and(char::is_ascii_digit);
            if sep.is_empty() && prev_num == next_digit {
                return Err(DropReason::InvalidDate);
            }
        }
        let start = i;
        if chars.get(i).is_some_and(char::is_ascii_digit) {
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
            let n = i - start;
            if n > 4 {
                return Err(DropReason::InvalidDate);
            }
            let v = chars[start..i]
                .iter()
                .fold(0u32, |acc, c| acc * 10 + c.to_digit(10).unwrap_or(0));
            // Ordinal suffix directly after a 1–2 digit number.
            let mut ordinal = false;
            if n <= 2 && i + 2 <= chars.len() {
                let suf: String = chars[i..i + 2]
                    .iter()
                    .collect::<String>()
                    .to_ascii_lowercase();
                let after_ok = chars.get(i + 2).is_none_or(|c| !c.is_alphabetic());
                if matches!(suf.as_str(), "st" | "nd" | "rd" | "th") && after_ok {
                    ordinal = true;
                    i += 2;
                }
            }
            comps[k] = Some(Comp::Num(v, n, ordinal));
        } else if chars.get(i).is_some_and(|c| c.is_ascii_alphabetic()) {
            while i < chars.len() && chars[i].is_ascii_alphabetic() {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            comps[k] = Some(Comp::Month(month(&word).ok_or(DropReason::InvalidDate)?));
        } else {
            return Err(DropReason::InvalidDate);
        }
    }
    if !is_time(&chars[i..]) {
        return Err(DropReason::InvalidDate);
    }
    let [Some(a), Some(b), Some(c)] = comps else {
        return Err(DropReason::InvalidDate);
    };
    use Comp::*;
    let day = |v: u32, n: usize| (n <= 2).then_some(v);
    let year = |v: u32, n: usize, ord: bool| (n == 4 && !ord).then_some(v);
    let (y, m, d) = match (a, b, c) {
        // ISO order.
        (Num(y, 4, false), Num(m, 1..=2, false), Num(d, 1..=2, false)) => (y, m, d),
        (Num(p, 1..=2, false), Num(q, 1..=2, false), Num(y, 4, false)) => {
            let day_first = if p > 12 && q <= 12 {
                true
            } else if q > 12 && p <= 12 {
                false
            } else {
                dotted[0] && dotted[1]
            };
            if day_first {
                (y, q, p)
            } else {
                (y, p, q)
            }
        }
        // D Mon YYYY, or YYYY Mon D.
        (Num(p, pn, po), Month(m), Num(q, qn, qo)) => {
            let (y, d) = if pn == 4 {
                (year(p, pn, po), day(q, qn))
            } else {
                (year(q, qn, qo), day(p, pn))
            };
            (
                y.ok_or(DropReason::InvalidDate)?,
                m,
                d.ok_or(DropReason::InvalidDate)?,
            )
        }
        (Month(m), Num(d, dn, _), Num(y, yn, yo)) => (
            year(y, yn, yo).ok_or(DropReason::InvalidDate)?,
            m,
            day(d, dn).ok_or(DropReason::InvalidDate)?,
        ),
        _ => return Err(DropReason::InvalidDate),
    };
    ymd(y, m, d)
}

/// Nothing, or a time after the date: `T` or whitespace, then digits with `:` (required), `.`,
/// `,`, `+`, `-`, `Z`, spaces, and the words AM, PM, UTC, GMT.
fn is_time(rest: &[char]) -> bool {
    if rest.is_empty() {
        return true;
    }
    let body = match rest[0] {
        'T' | 't' if rest.get(1).is_some_and(char::is_ascii_digit) => &rest[1..],
        c if c.is_whitespace() => {
            let s = rest
                .iter()
                .position(|c| !c.is_whitespace())
                .unwrap_or(rest.len());
            if !rest.get(s).is_some_and(char::is_ascii_digit) {
                return false;
            }
            &rest[s..]
        }
        _ => return false,
    };
    if !body.contains(&':') {
        return false;
    }
    let mut i = 0;
    while i < body.len() {
        let c = body[i];
        if c.is_ascii_digit() || matches!(c, ':' | '.' | ',' | '+' | '-' | ' ') {
            i += 1;
        } else if c.is_ascii_alphabetic() {
            let s = i;
            while i < body.len() && body[i].is_ascii_alphabetic() {
                i += 1;
            }
            let w: String = body[s..i].iter().collect::<String>().to_ascii_lowercase();
            if !matches!(w.as_str(), "z" | "am" | "pm" | "utc" | "gmt") {
                return false;
            }
        } else {
            return false;
        }
    }
    true
}

/// `1997年2月16日`, `1997년 2월 16일`: each number labelled, in any order.
fn labelled(t: &str) -> Result<String, DropReason> {
    // [year, month, day]
    let mut parts: [Option<u32>; 3] = [None; 3];
    let mut num: Option<(u32, usize)> = None;
    for c in t.chars() {
        if c.is_ascii_digit() {
            let (acc, n) = num.unwrap_or((0, 0));
            if n >= 4 {
                return Err(DropReason::InvalidDate);
            }
            num = Some((acc * 10 + (c as u32 - '0' as u32), n + 1));
            continue;
        }
        let slot = match c {
            '年' | '년' => 0,
            '月' | '월' => 1,
            '日' | '일' => 2,
            c if c.is_whitespace() && num.is_none() => continue,
            _ => return Err(DropReason::InvalidDate),
        };
        let (v, n) = num.take().ok_or(DropReason::InvalidDate)?;
        if parts[slot].is_some() || (slot == 0) != (n == 4) {
            return Err(DropReason::InvalidDate);
        }
        parts[slot] = Some(v);
    }
    match (num, parts) {
        (None, [Some(y), Some(m), Some(d)]) => ymd(y, m, d),
        _ => Err(DropReason::InvalidDate),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> String {
        from_text(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn accepted_forms() {
        for s in [
            "1997-02-16",
            "1997/02/16",
            "1997.2.16",
            "19970216",
            "1997-02-16T00:00:00Z",
            "1997-02-16 10:00",
            "1997-02-16 10:00:00.000+02:00",
            "1997-02-16T10:00:00-0500",
            "2/16/1997",
            "02-16-1997",
            "16.2.1997",
            "16. 2. 1997",
            "16/2/1997",
            "16-02-1997",
            "16 Feb 1997",
            "16-Feb-1997",
            "16th February 1997",
            "February 16, 1997",
            "Feb. 16, 1997",
            "feb 16 1997",
            "1997-Feb-16",
            "16Feb1997",
            "1997年2月16日",
            "1997년 2월 16일",
            "2/16/1997 10:00 PM",
        ] {
            assert_eq!(ok(s), "19970216", "{s}");
        }
        // Ambiguous: month first, unless separated by dots.
        assert_eq!(ok("03/04/1995"), "19950304");
        assert_eq!(ok("03-04-1995"), "19950304");
        assert_eq!(ok("03.04.1995"), "19950403");
        assert_eq!(ok("2000-02-29"), "20000229");
    }

    #[test]
    fn rejected_forms() {
        for s in [
            "2/30/1997",
            "02-29-1900",
            "1997-02-30",
            "1990-15-06",
            "12/31/90",
            "01-01-01",
            "1899-12-31",
            "13-13-1990",
            "Born: 12-31-1990",
            "2/16/1997 (mm/dd/yyyy)",
            "12-31-1990-15-30",
            "1990-12-31-00-00-00",
            "199012311999",
            "1990123",
            "12-31",
            "1990",
            "Smarch 16 1997",
            "16 Feb 97",
            "Feb 1997",
            "１２－３１－１９９０",
            "1997-02-16 10",
            "19971316",
        ] {
            assert_eq!(from_text(s), Err(DropReason::InvalidDate), "{s}");
        }
        let next = current_year() + 1;
        assert_eq!(
            from_text(&format!("{next}-01-01")),
            Err(DropReason::InvalidDate)
        );
        assert_eq!(
            from_text(&format!("{}-01-01", current_year())).unwrap(),
            format!("{}0101", current_year())
        );
    }

    #[test]
    fn sql_dates() {
        assert_eq!(
            from_date(NaiveDate::from_ymd_opt(1997, 2, 16).unwrap()).unwrap(),
            "19970216"
        );
        assert_eq!(
            from_date(NaiveDate::from_ymd_opt(1850, 2, 16).unwrap()),
            Err(DropReason::InvalidDate)
        );
    }
}
