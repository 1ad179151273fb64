//! ph: E.164 digits without '+'.
//!
//! Meta: "remove symbols, letters and any leading zeros; must include the country code" — its
//! own example turns US `(650)555-1212` into `16505551212` [D-cust]. Policy row "ph": `+` or
//! `00` starts an international number; a national number gets the calling code of the row's
//! country, else the model's `default_country`, with the trunk prefix removed, using
//! libphonenumber metadata (the `phonenumber` crate's database, see `phone_meta`). Numbers the
//! metadata calls invalid are dropped, not guessed. With no country known: digits only, leading
//! zeros removed, 7–15 digits (what no SDK adds: the country code).
//!
//! What the text may hold: digits (ASCII, full-width, Arabic-Indic), one leading `+`, the usual
//! separators (spaces, `-` `.` `/` `(` `)` `[` `]` `_` and Unicode dashes), a `(0)` trunk
//! marker after the country code (`+44 (0)20 …`), a `tel:` prefix, and an extension at the end
//! (`x123`, `ext. 5`, `extension 5`, `#5`, `;ext=5`), which is removed. Any other letter or
//! symbol drops the value: vanity numbers (`1-800-FLOWERS`) and labels (`Tel: …`) are not
//! guessed at (the Parameter Builder deletes the letters: `1-800-FLOWERS` → `1800`).
//!
//! A national-looking digit string is read, in order:
//! 1. as already carrying the country's own calling code (`442079460958` with GB, `16505551212`
//!    with US) — so our own output re-normalizes to itself;
//! 2. as a national number of the country (`6505551212`, `02079460958`);
//! 3. as E.164 digits of another country without the `+` (`442079460958` with US) — so our
//!    output for a foreign number re-normalizes to itself too, unless those digits are also a
//!    valid national number of the context country (e.g. Norway's `+47 55 55 12 34` gives
//!    `4755551234`, which in a US context is the valid US number (475) 555-1234; a bare digit
//!    string cannot say which it is, and a national reading is what a US model's data means).

use super::phone_meta::{code_prefix_len, engine, Parsed, Region};
use super::{DropReason, NormalizeContext};

/// Most digits we look at (E.164 has ≤15; the parser allows national numbers up to 17).
const MAX_DIGITS: usize = 20;

struct Lexed {
    digits: [u8; MAX_DIGITS],
    len: usize,
    plus: bool,
    /// Digit position of a `(0)` marker.
    paren_zero: Option<usize>,
}

impl Lexed {
    fn digits(&self) -> &str {
        // Only ASCII digits are stored.
        std::str::from_utf8(&self.digits[..self.len]).unwrap_or("")
    }
}

fn digit_value(c: char) -> Option<u8> {
    let v = match c {
        '0'..='9' => c as u32 - '0' as u32,
        '\u{ff10}'..='\u{ff19}' => c as u32 - 0xff10,
        '\u{660}'..='\u{669}' => c as u32 - 0x660,
        '\u{6f0}'..='\u{6f9}' => c as u32 - 0x6f0,
        _ => return None,
    };
    Some(v as u8)
}

fn is_separator(c: char) -> bool {
    matches!(
        c,
        '-' | '.' | '/' | '(' | ')' | '[' | ']' | '_' | '\u{2010}'
            ..='\u{2015}' | '\u{2212}' | '\u{30fc}' | '\u{ff0d}'
    ) || c.is_whitespace()
}

/// True when `rest` (starting at a letter, `#`, `;` or `,`) is an extension: a marker, optional
/// `.`/`:`/`=`/spaces, 1–10 digits, optional trailing `#`.
fn is_extension(rest: &str) -> bool {
    let lower = rest.to_ascii_lowercase();
    let mut s = lower.as_str();
    let mut found = false;
    for marker in [";ext=", "extension", "extn", "ext", "x", "#", ";", ","] {
        if let Some(r) = s.strip_prefix(marker) {
            s = r;
            found = true;
            break;
        }
    }
    if !found {
        return false;
    }
    let s = s.trim_start_matches(['.', ':', '=', ' ', '\t']);
    let s = s.strip_suffix('#').unwrap_or(s);
    (1..=10).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit())
}

fn lex(t: &str) -> Result<Lexed, DropReason> {
    let t = match t.get(..4) {
        Some(p) if p.eq_ignore_ascii_case("tel:") => t[4..].trim_start(),
        _ => t,
    };
    let mut lx = Lexed {
        digits: [0; MAX_DIGITS],
        len: 0,
        plus: false,
        paren_zero: None,
    };
    let mut it = t.char_indices().peekable();
    while let Some((i, c)) = it.next() {
        if let Some(v) = digit_value(c) {
            if lx.len == MAX_DIGITS {
                return Err(DropReason::InvalidPhone);
            }
            lx.digits[lx.len] = b'0' + v;
            lx.len += 1;
        } else if c == '+' || c == '\u{ff0b}' {
            if lx.plus || lx.len > 0 {
                return Err(DropReason::InvalidPhone);
            }
            lx.plus = true;
        } else if c == '(' && t[i..].starts_with("(0)") && lx.len > 0 && lx.paren_zero.is_none() {
            lx.paren_zero = Some(lx.len);
            it.next();
            it.next();
        } else if is_separator(c) {
        } else if lx.len > 0
            && (c.is_alphabetic() || matches!(c, '#' | ';' | ','))
            && is_extension(&t[i..])
        {
            break;
        } else {
            return Err(DropReason::InvalidPhone);
        }
    }
    if lx.len == 0 {
        return Err(DropReason::InvalidPhone);
    }
    Ok(lx)
}

/// The phone region from the context: the row's country if libphonenumber knows it, else the
/// model's default country.
fn region(ctx: &NormalizeContext<'_>) -> Option<&'static Region> {
    let e = engine();
    [ctx.row_country, ctx.default_country]
        .into_iter()
        .flatten()
        .filter_map(super::country_code)
        .find_map(|code| e.region(code))
}

fn valid(p: Option<Parsed>) -> Option<String> {
    let p = p?;
    engine().is_valid(&p).then(|| p.e164_digits())
}

fn international(digits: &str) -> Result<String, DropReason> {
    let e = engine();
    let out = e
        .parse_international_valid(digits)
        .map(|p| p.e164_digits())
        .ok_or(DropReason::InvalidPhone)?;
    // The parser strips national prefixes after the calling code ("+7 8 8030..."), and its
    // output, read again, can be another number or none ("+7 803 000 0000" is invalid once
    // its own leading 8 is taken for a prefix). Such a number would not match what the
    // customer gave anywhere else: dropped. Only numbers the parse changed are read twice.
    if out != digits
        && e.parse_international_valid(&out)
            .is_none_or(|again| again.e164_digits() != out)
    {
        return Err(DropReason::InvalidPhone);
    }
    Ok(out)
}

fn national(digits: &str, region: Option<&'static Region>) -> Result<String, DropReason> {
    let e = engine();
    let Some(r) = region else {
        // No country known: digits only, leading zeros removed (policy), 7–15 digits.
        let d = digits.trim_start_matches('0');
        return if (7..=15).contains(&d.len()) {
            Ok(d.to_string())
        } else {
            Err(DropReason::InvalidPhone)
        };
    };
    if code_prefix_len(digits, r.calling_code()).is_some() {
        if let Some(p) = e
            .parse_international_valid(digits)
            .filter(|p| p.code == r.calling_code())
        {
            return Ok(p.e164_digits());
        }
    }
    if let Some(out) = valid(e.parse_national(r, digits)) {
        return Ok(out);
    }
    international(digits)
}

pub(super) fn phone_text(t: &str, ctx: &NormalizeContext<'_>) -> Result<String, DropReason> {
    let lx = lex(t)?;
    let region = region(ctx);
    let mut digits = lx.digits();
    // International: '+' (a doubled "+00" counts once), "00", or the region's own IDD
    // (011 in NANP countries, 0011 in Australia, ...).
    let intl = if lx.plus {
        digits = digits.strip_prefix("00").unwrap_or(digits);
        true
    } else if let Some(rest) = region.and_then(|r| r.strip_idd(digits)) {
        digits = rest;
        true
    } else if let Some(rest) = digits.strip_prefix("00") {
        digits = rest;
        true
    } else {
        false
    };
    if intl {
        // "(0)" after the country code is a trunk prefix written for national callers: dropped.
        return international(digits);
    }
    match lx.paren_zero {
        Some(at) => {
            let mut with_zero = String::with_capacity(digits.len() + 1);
            with_zero.push_str(&digits[..at]);
            with_zero.push('0');
            with_zero.push_str(&digits[at..]);
            national(&with_zero, region)
        }
        None => national(digits, region),
    }
}

/// ph from an integer column: its decimal digits, read like national-looking text.
pub(super) fn phone_int(n: i64, ctx: &NormalizeContext<'_>) -> Result<String, DropReason> {
    if n <= 0 {
        return Err(DropReason::InvalidPhone);
    }
    national(&n.to_string(), region(ctx))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(c: &str) -> NormalizeContext<'_> {
        NormalizeContext {
            default_country: Some(c),
            ..Default::default()
        }
    }

    #[test]
    fn meta_doc_example() {
        assert_eq!(
            phone_text("(650)555-1212", &ctx("US")).unwrap(),
            "16505551212"
        );
    }

    #[test]
    fn policy_examples() {
        let none = NormalizeContext::default();
        let us = ctx("us");
        let gb = ctx("United Kingdom");
        assert_eq!(
            phone_text("+1 (650) 555-1212", &none).unwrap(),
            "16505551212"
        );
        assert_eq!(phone_text("(650) 555-1212", &us).unwrap(), "16505551212");
        assert_eq!(phone_text("(650) 555-1212", &none).unwrap(), "6505551212");
        assert_eq!(phone_text("020 7946 0958", &gb).unwrap(), "442079460958");
        assert_eq!(
            phone_text("+44 (0)20 7946 0958", &none).unwrap(),
            "442079460958"
        );
        assert_eq!(
            phone_text("+44 (0)20 7946 0958", &us).unwrap(),
            "442079460958"
        );
        assert_eq!(
            phone_text("0044 20 7946 0958", &us).unwrap(),
            "442079460958"
        );
        assert_eq!(
            phone_text("0044 20 7946 0958", &none).unwrap(),
            "442079460958"
        );
        assert_eq!(
            phone_text("011 44 20 7946 0958", &us).unwrap(),
            "442079460958"
        );
        assert_eq!(
            phone_text("06 12 34 56 78", &ctx("fr")).unwrap(),
            "33612345678"
        );
        assert_eq!(phone_text("06 12 34 56 78", &none).unwrap(), "612345678");
        assert_eq!(
            phone_text("06 1234 5678", &ctx("it")).unwrap(),
            "390612345678"
        );
        assert_eq!(
            phone_text("1-800-FLOWERS", &us),
            Err(DropReason::InvalidPhone)
        );
        assert_eq!(
            phone_text("555-123-4567", &us),
            Err(DropReason::InvalidPhone)
        );
    }

    #[test]
    fn national_number_of_another_country_is_dropped() {
        assert_eq!(
            phone_text("(650) 555-1212", &ctx("gb")),
            Err(DropReason::InvalidPhone)
        );
    }

    #[test]
    fn row_country_wins_over_default() {
        let c = NormalizeContext {
            default_country: Some("us"),
            row_country: Some("France"),
            ..Default::default()
        };
        assert_eq!(phone_text("06 12 34 56 78", &c).unwrap(), "33612345678");
        // An unknown row country falls back to the default.
        let c = NormalizeContext {
            default_country: Some("us"),
            row_country: Some("Narnia"),
            ..Default::default()
        };
        assert_eq!(phone_text("(650) 555-1212", &c).unwrap(), "16505551212");
    }

    #[test]
    fn extensions_and_separators() {
        let us = ctx("US");
        for s in [
            "(650) 555-1212 x123",
            "(650) 555-1212 ext. 5",
            "+1-650-555-1212 ext 123",
            "650.555.1212 extension 12",
            "650-555-1212#99",
            "tel:+1-650-555-1212",
            "650/555/1212",
            "(650)\u{a0}555\u{2013}1212",
            "６５０５５５１２１２",
        ] {
            assert_eq!(phone_text(s, &us).unwrap(), "16505551212", "{s}");
        }
        for s in [
            "Phone: 650-555-1212",
            "650*555*1212",
            "650-555-1212 call me",
            "+1+650",
            "x123",
        ] {
            assert_eq!(phone_text(s, &us), Err(DropReason::InvalidPhone), "{s}");
        }
    }

    #[test]
    fn no_country_length_limits() {
        let none = NormalizeContext::default();
        assert_eq!(phone_text("123456", &none), Err(DropReason::InvalidPhone));
        assert_eq!(phone_text("0 1234567", &none).unwrap(), "1234567");
        assert_eq!(
            phone_text("0001234567", &none),
            Err(DropReason::InvalidPhone)
        );
        assert_eq!(
            phone_text("1234567890123456", &none),
            Err(DropReason::InvalidPhone)
        );
    }

    #[test]
    fn integers() {
        assert_eq!(phone_int(16505551212, &ctx("us")).unwrap(), "16505551212");
        assert_eq!(phone_int(6505551212, &ctx("us")).unwrap(), "16505551212");
        assert_eq!(phone_int(442079460958, &ctx("us")).unwrap(), "442079460958");
        assert_eq!(phone_int(-1, &ctx("us")), Err(DropReason::InvalidPhone));
    }

    /// "+7 8 8 803 000 0000": the parser takes two 8s for prefixes and gives "+7 803 000 0000",
    /// which read again is no valid number. Such an output would change with every read.
    #[test]
    fn a_number_the_parser_reads_differently_twice_is_dropped() {
        for (c, s) in [
            ("us", "7888030000000"),
            ("us", "+7888030000000"),
            ("de", "+7888030000000"),
        ] {
            let cx = ctx(c);
            match phone_text(s, &cx) {
                Ok(once) => assert_eq!(phone_text(&format!("+{once}"), &cx), Ok(once), "{c} {s}"),
                Err(e) => assert_eq!(e, DropReason::InvalidPhone, "{c} {s}"),
            }
        }
        assert_eq!(
            phone_text("+7888030000000", &ctx("us")),
            Err(DropReason::InvalidPhone)
        );
    }

    #[test]
    fn own_output_renormalizes() {
        for (c, s) in [
            ("us", "+44 20 7946 0958"),
            ("gb", "+1 650 555 1212"),
            ("gb", "020 7946 0958"),
            ("de", "+49 30 12345678"),
            ("it", "06 1234 5678"),
        ] {
            let cx = ctx(c);
            let once = phone_text(s, &cx).unwrap();
            assert_eq!(phone_text(&once, &cx).unwrap(), once, "{c} {s}");
        }
    }

    #[test]
    fn bare_digits_are_ambiguous_across_countries() {
        // Norway's +47 55 55 12 34 and the US number (475) 555-1234 share their digits.
        let none = NormalizeContext::default();
        assert_eq!(phone_text("+47 55 55 12 34", &none).unwrap(), "4755551234");
        assert_eq!(phone_text("4755551234", &ctx("us")).unwrap(), "14755551234");
    }
}
