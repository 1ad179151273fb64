//! ct, st, zp, country, and [`country_code`]. Inputs to the field functions arrive NFC, trimmed
//! and not 64-hex.

use super::person::letters;
use super::tables::{COUNTRY_KEYS, STATE_KEYS};
use super::{lowercase, DropReason, NormalizeContext};
use std::sync::OnceLock;
use unicode_normalization::char::{decompose_canonical, is_combining_mark};

const KEY_MAX: usize = 64;

/// A lookup key for country and state names: lowercase ASCII letters only. Accents are folded
/// (é→e, ß→ss, ø→o), apostrophes join (`people's`→`peoples`), any other non-letter separates
/// words; and when there are several words, "st" becomes "saint" and "the" and "and" are dropped
/// ("The Netherlands", "Bosnia & Herzegovina"). Any digit, or a letter outside the Latin
/// script, means "no key" (None).
pub(super) fn fold_key(raw: &str, out: &mut [u8; KEY_MAX]) -> Option<usize> {
    // First pass: lowercase ASCII words separated by single spaces.
    let mut w = Words {
        buf: [0; KEY_MAX],
        len: 0,
    };
    for ch in raw.chars() {
        if ch.is_ascii() {
            let b = ch as u8;
            if b.is_ascii_alphabetic() {
                w.push(b.to_ascii_lowercase())?;
            } else if b.is_ascii_digit() {
                return None;
            } else if !matches!(b, b'\'' | b'`') {
                w.space()?;
            }
            continue;
        }
        for lc in ch.to_lowercase() {
            if is_combining_mark(lc) || matches!(lc, '’' | 'ʼ' | '‘') {
                continue;
            }
            let special: &[u8] = match lc {
                'ß' => b"ss",
                'æ' => b"ae",
                'ø' => b"o",
                'œ' => b"oe",
                'đ' | 'ð' => b"d",
                'ł' => b"l",
                'þ' => b"th",
                'ı' => b"i",
                _ => b"",
            };
            if !special.is_empty() {
                for &b in special {
                    w.push(b)?;
                }
            } else if lc.is_alphabetic() {
                let mut base = [0u8; 4];
                let mut k = 0;
                decompose_canonical(lc, |d| {
                    if d.is_ascii_lowercase() && k < base.len() {
                        base[k] = d as u8;
                        k += 1;
                    }
                });
                if k == 0 {
                    return None; // not a Latin letter
                }
                for &b in &base[..k] {
                    w.push(b)?;
                }
            } else if lc.is_numeric() {
                return None;
            } else {
                w.space()?;
            }
        }
    }
    let text = &w.buf[..w.len];
    let words = || text.split(|&b| b == b' ').filter(|w| !w.is_empty());
    let several = words().nth(1).is_some();
    let mut len = 0usize;
    for word in words() {
        if several && (word == b"the" || word == b"and") {
            continue;
        }
        let word: &[u8] = if several && word == b"st" {
            b"saint"
        } else {
            word
        };
        out.get_mut(len..len + word.len())?.copy_from_slice(word);
        len += word.len();
    }
    (len > 0).then_some(len)
}

struct Words {
    buf: [u8; KEY_MAX],
    len: usize,
}

impl Words {
    fn push(&mut self, b: u8) -> Option<()> {
        *self.buf.get_mut(self.len)? = b;
        self.len += 1;
        Some(())
    }

    fn space(&mut self) -> Option<()> {
        if self.len > 0 && self.buf[self.len - 1] != b' ' {
            self.push(b' ')?;
        }
        Some(())
    }
}

fn lookup(table: &'static [(&'static str, &'static str)], raw: &str) -> Option<&'static str> {
    let mut buf = [0u8; KEY_MAX];
    let len = fold_key(raw, &mut buf)?;
    let key = std::str::from_utf8(&buf[..len]).ok()?;
    table
        .binary_search_by(|(k, _)| (*k).cmp(key))
        .ok()
        .map(|i| table[i].1)
}

/// ISO 3166-1 alpha-2 lowercase code from a code, name or common alias (any case, punctuation,
/// spaces); None if unknown.
pub fn country_code(raw: &str) -> Option<&'static str> {
    // Fast path for the common case, a 2-letter code.
    if let [a, b] = raw.as_bytes() {
        if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() {
            return alpha2_table()[alpha2_index(*a, *b)];
        }
    }
    lookup(&COUNTRY_KEYS, raw)
}

fn alpha2_index(a: u8, b: u8) -> usize {
    (a.to_ascii_lowercase() - b'a') as usize * 26 + (b.to_ascii_lowercase() - b'a') as usize
}

/// Every 2-letter key of `COUNTRY_KEYS` (the alpha-2 codes and "uk"), indexed directly.
fn alpha2_table() -> &'static [Option<&'static str>; 676] {
    static TABLE: OnceLock<[Option<&'static str>; 676]> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = [None; 676];
        for (k, v) in COUNTRY_KEYS.iter() {
            if let [a, b] = k.as_bytes() {
                t[alpha2_index(*a, *b)] = Some(*v);
            }
        }
        t
    })
}

/// country: ISO 3166-1 alpha-2, lowercase; names and aliases map to codes; unknown values are
/// dropped. Policy row "country" (the legacy SDKs reject names; the Parameter Builder keeps the
/// first two letters of unknown values, e.g. "Japão" → "ja"; we never guess a code).
pub(super) fn country(t: &str) -> Result<String, DropReason> {
    country_code(t)
        .map(str::to_string)
        .ok_or(DropReason::UnknownCountry)
}

/// ct: lowercase, whitespace, punctuation and digits removed, letters of any script kept
/// ("São Paulo" → "sãopaulo"). Policy row "ct" (the Parameter Builder deletes non-ASCII letters).
pub(super) fn city(t: &str) -> Result<String, DropReason> {
    let out = letters(t, false);
    if out.is_empty() {
        Err(DropReason::Empty)
    } else {
        Ok(out)
    }
}

/// st: lowercase, no whitespace or punctuation (letters of any script and digits kept). US
/// states, DC, territories and Canadian provinces/territories — as codes, names or common
/// abbreviations ("N.Y.", "Calif.") — become their 2-letter code; any other value is kept whole.
/// Policy row "st" (the Parameter Builder cuts unknown values to 2 letters and matches
/// substrings: "New South Wales" → "ne"; we keep "newsouthwales").
pub(super) fn state(t: &str) -> Result<String, DropReason> {
    if let Some(code) = lookup(&STATE_KEYS, t) {
        return Ok(code.to_string());
    }
    let out = letters(t, true);
    if out.is_empty() {
        Err(DropReason::Empty)
    } else {
        Ok(out)
    }
}

fn is_dash(c: char) -> bool {
    matches!(
        c,
        '-' | '\u{2010}'..='\u{2015}' | '\u{2212}' | '\u{fe63}' | '\u{ff0d}'
    )
}

pub(super) fn is_us(ctx: &NormalizeContext<'_>) -> bool {
    ctx.country() == Some("us")
}

/// zp: lowercase, whitespace removed, cut at the first dash; a US value (5 or 9 digits, or any
/// all-digit value when the row's country — else the model's default country — is `us`) keeps
/// its first 5 digits. Fewer than 2 characters left is invalid. Policy row "zp" (Meta: "no
/// spaces, no dash, US: first 5 digits"; the Parameter Builder keeps inner spaces and nobody
/// cuts a 9-digit ZIP). Other characters are kept as they are.
pub(super) fn zip(t: &str, ctx: &NormalizeContext<'_>) -> Result<String, DropReason> {
    finish_zip(zip_text(t), ctx)
}

/// Lowercased, whitespace removed, cut at the first dash (ZIP+4 and the like).
fn zip_text(t: &str) -> String {
    if t.is_ascii() {
        ascii_zip_text(t)
    } else {
        any_zip_text(t)
    }
}

/// [`any_zip_text`] byte by byte, for ASCII input (no lowercased copy first).
fn ascii_zip_text(t: &str) -> String {
    let mut out = String::with_capacity(t.len());
    for b in t.bytes() {
        if b == b'-' {
            break;
        }
        // char::is_whitespace on ASCII (it includes vertical tab, u8's version does not).
        if !matches!(b, b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r') {
            out.push(char::from(b.to_ascii_lowercase()));
        }
    }
    out
}

fn any_zip_text(t: &str) -> String {
    let lower = lowercase(t);
    let mut out = String::with_capacity(lower.len());
    for c in lower.chars() {
        if is_dash(c) {
            break;
        }
        if !c.is_whitespace() {
            out.push(c);
        }
    }
    out
}

fn finish_zip(mut out: String, ctx: &NormalizeContext<'_>) -> Result<String, DropReason> {
    if !out.is_empty()
        && out.bytes().all(|b| b.is_ascii_digit())
        && (out.len() == 9 || (out.len() > 5 && is_us(ctx)))
    {
        out.truncate(5);
    }
    if out.chars().count() < 2 {
        return Err(DropReason::InvalidZip);
    }
    Ok(out)
}

/// zp from an integer column: in a US context the leading zeros an integer cannot hold are put
/// back (2134 → "02134"; 8–9 digits are a ZIP+4 → its first 5 of 9 digits). Elsewhere the
/// decimal digits are used as they are.
pub(super) fn zip_int(n: i64, ctx: &NormalizeContext<'_>) -> Result<String, DropReason> {
    if n < 0 {
        return Err(DropReason::InvalidZip);
    }
    let s = if is_us(ctx) {
        match n {
            0..=99_999 => format!("{n:05}"),
            100_000..=999_999_999 => format!("{n:09}"),
            _ => n.to_string(),
        }
    } else {
        n.to_string()
    };
    finish_zip(s, ctx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn the_ascii_zip_path_agrees_with_the_general_one(t in "[ -~\t\n\x0b\x0c\r]{0,14}") {
            prop_assert_eq!(ascii_zip_text(&t), any_zip_text(&t));
        }
    }

    fn key(s: &str) -> Option<String> {
        let mut b = [0u8; KEY_MAX];
        fold_key(s, &mut b).map(|n| String::from_utf8(b[..n].to_vec()).unwrap())
    }

    #[test]
    fn tables_are_sorted_folded_and_consistent() {
        for table in [&COUNTRY_KEYS[..], &STATE_KEYS[..]] {
            for w in table.windows(2) {
                assert!(w[0].0 < w[1].0, "{:?} before {:?}", w[0], w[1]);
            }
            for (k, v) in table {
                assert_eq!(key(k).as_deref(), Some(*k), "key {k} is not folded");
                assert_eq!(v.len(), 2);
            }
        }
        // Every alpha-2 code in the table maps to itself.
        for (_, v) in COUNTRY_KEYS.iter() {
            assert_eq!(country_code(v), Some(*v), "{v}");
        }
        assert_eq!(COUNTRY_KEYS.iter().filter(|(k, v)| k == v).count(), 249);
    }

    #[test]
    fn keys() {
        assert_eq!(key("U.S.A.").unwrap(), "usa");
        assert_eq!(key("Côte d'Ivoire").unwrap(), "cotedivoire");
        assert_eq!(key("The Netherlands").unwrap(), "netherlands");
        assert_eq!(key("Bosnia & Herzegovina").unwrap(), "bosniaherzegovina");
        assert_eq!(key("St. Lucia").unwrap(), "saintlucia");
        assert_eq!(key("AND").unwrap(), "and");
        assert_eq!(key("Österreich").unwrap(), "osterreich");
        assert_eq!(key("Japan2024"), None);
        assert_eq!(key("Россия"), None);
        assert_eq!(key("İstanbul").unwrap(), "istanbul");
    }

    #[test]
    fn countries() {
        for (raw, code) in [
            ("United States", "us"),
            ("USA", "us"),
            ("u.s.a.", "us"),
            ("United States of America", "us"),
            ("America", "us"),
            ("US", "us"),
            ("UK", "gb"),
            ("Great Britain", "gb"),
            ("England", "gb"),
            ("Scotland", "gb"),
            ("Wales", "gb"),
            ("Northern Ireland", "gb"),
            ("United Kingdom", "gb"),
            ("South Korea", "kr"),
            ("Korea, Republic of", "kr"),
            ("North Korea", "kp"),
            ("Russia", "ru"),
            ("Czechia", "cz"),
            ("Czech Republic", "cz"),
            ("Ivory Coast", "ci"),
            ("Côte d’Ivoire", "ci"),
            ("Holland", "nl"),
            ("the Netherlands", "nl"),
            ("UAE", "ae"),
            ("Türkiye", "tr"),
            ("deu", "de"),
            ("Can.", "ca"),
            ("Åland Islands", "ax"),
            ("Curaçao", "cw"),
            ("St Kitts & Nevis", "kn"),
            ("Georgia", "ge"),
            ("Guinea", "gn"),
            ("Congo", "cg"),
            ("DR Congo", "cd"),
        ] {
            assert_eq!(country_code(raw), Some(code), "{raw}");
        }
        for raw in [
            "Narnia",
            "xx",
            "uu",
            "Japan2024",
            "Ger.",
            "123",
            "Kosovo",
            "Europe",
            "EU",
        ] {
            assert_eq!(country_code(raw), None, "{raw}");
        }
    }

    #[test]
    fn states() {
        for (raw, code) in [
            ("California", "ca"),
            ("  California.  ", "ca"),
            ("C/a/lifo,rnia.", "ca"),
            ("CA", "ca"),
            ("N.Y.", "ny"),
            ("new york", "ny"),
            ("Washington, D.C.", "dc"),
            ("District of Columbia", "dc"),
            ("Puerto Rico", "pr"),
            ("Québec", "qc"),
            ("Newfoundland and Labrador", "nl"),
            ("Prince Edward Island", "pe"),
            ("Calif.", "ca"),
            ("Tex.", "tx"),
            ("Mass.", "ma"),
            ("Califórnia", "ca"),
        ] {
            assert_eq!(state(raw).unwrap(), code, "{raw}");
        }
        assert_eq!(state("New South Wales").unwrap(), "newsouthwales");
        assert_eq!(state("Bayern").unwrap(), "bayern");
        assert_eq!(state("TE").unwrap(), "te");
        assert_eq!(state("Île-de-France").unwrap(), "îledefrance");
        assert_eq!(state("Florida32801").unwrap(), "florida32801");
        assert_eq!(state("..."), Err(DropReason::Empty));
    }

    #[test]
    fn cities() {
        assert_eq!(city("São Paulo").unwrap(), "sãopaulo");
        assert_eq!(city("St. Louis").unwrap(), "stlouis");
        assert_eq!(city("Winston-Salem").unwrap(), "winstonsalem");
        assert_eq!(city("Seattle-98121").unwrap(), "seattle");
        assert_eq!(city("Москва").unwrap(), "москва");
        assert_eq!(city("北京").unwrap(), "北京");
        assert_eq!(city("123"), Err(DropReason::Empty));
    }

    #[test]
    fn zips() {
        let none = NormalizeContext::default();
        let us = NormalizeContext {
            row_country: Some("United States"),
            ..Default::default()
        };
        let gb = NormalizeContext {
            default_country: Some("gb"),
            ..Default::default()
        };
        assert_eq!(zip("94105-1234", &none).unwrap(), "94105");
        assert_eq!(zip("941051234", &none).unwrap(), "94105");
        assert_eq!(zip("12345 9876", &none).unwrap(), "12345");
        assert_eq!(zip("NR9 5AL", &gb).unwrap(), "nr95al");
        assert_eq!(zip(" 1234 AB", &none).unwrap(), "1234ab");
        assert_eq!(zip("9410512", &us).unwrap(), "94105");
        assert_eq!(zip("9410512", &none).unwrap(), "9410512");
        assert_eq!(zip("01310–100", &none).unwrap(), "01310");
        assert_eq!(zip("1", &none), Err(DropReason::InvalidZip));
        assert_eq!(zip("-12345", &none), Err(DropReason::InvalidZip));
        assert_eq!(zip_int(2134, &us).unwrap(), "02134");
        assert_eq!(zip_int(21340001, &us).unwrap(), "02134");
        assert_eq!(zip_int(2134, &none).unwrap(), "2134");
        assert_eq!(zip_int(-5, &us), Err(DropReason::InvalidZip));
    }
}
