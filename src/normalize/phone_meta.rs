//! Phone-number parsing and validation on libphonenumber metadata (the `phonenumber` crate's
//! database), without the crate's regex cache.
//!
//! Why this exists: `phonenumber::parse` + `is_valid` cost ~5 µs per number because every regex
//! use goes through one global `Mutex<LruCache>` (capacity 100) keyed by the pattern text — a
//! multi-KB string for e.g. the US fixed-line pattern — and recompiles patterns evicted from the
//! cache when many countries are seen. That is too slow for the hot path and serialises threads.
//!
//! This module is a faithful port of the crate's own `parse` (for strings that are only ASCII
//! digits, optionally read as `+digits`) and `is_valid`, using the same metadata patterns compiled
//! once per region (as anchored DFAs where only a match at the start matters, see [`Prefix`]).
//! The unit tests check it against the crate itself on every region's example numbers and on
//! random digit strings (differential tests).

use phonenumber::metadata::{Descriptor, Metadata, DATABASE};
use regex::{Regex, RegexBuilder};
use regex_automata::dfa::{dense, Automaton, StartKind};
use regex_automata::{nfa::thompson, util::syntax, Anchored, Input};
use std::sync::OnceLock;

/// `phonenumber` consts: MIN_LENGTH_FOR_NSN, MAX_LENGTH_FOR_NSN, MAX_LENGTH_FOR_COUNTRY_CODE.
const MIN_NSN: usize = 2;
const MAX_NSN: usize = 17;
const MAX_CC: usize = 3;

/// A parsed number: country calling code and national significant number (with any leading
/// zeros that are part of it, e.g. Italian fixed lines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Parsed {
    pub code: u16,
    pub national: String,
}

impl Parsed {
    /// E.164 digits without '+'.
    pub fn e164_digits(&self) -> String {
        let mut s = String::with_capacity(3 + self.national.len());
        push_u16(&mut s, self.code);
        s.push_str(&self.national);
        s
    }
}

/// The decimal digits of a calling code (1-999), without a heap string.
fn code_digits(v: u16) -> ([u8; 3], usize) {
    let mut buf = [0u8; 3];
    let len = if v >= 100 {
        3
    } else if v >= 10 {
        2
    } else {
        1
    };
    let mut n = v;
    for slot in buf[..len].iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
    (buf, len)
}

fn push_u16(s: &mut String, v: u16) {
    let (buf, len) = code_digits(v);
    s.extend(buf[..len].iter().map(|&b| char::from(b)));
}

/// The length of `v`'s decimal digits when `digits` starts with them (a calling code, 1-999).
pub fn code_prefix_len(digits: &str, v: u16) -> Option<usize> {
    let (buf, len) = code_digits(v);
    let d = digits.as_bytes();
    // Byte by byte: a slice comparison would call memcmp for one to three bytes.
    (d.len() >= len && (0..len).all(|i| d[i] == buf[i])).then_some(len)
}

/// A metadata pattern searched only at the start of a digit string, as a dense DFA: every use
/// the parser makes of these patterns asks whether a match starts at 0 (a leftmost-first `find`
/// that starts at 0 exists iff an anchored match exists, and ends where the anchored one does).
/// A dense DFA answers in one table step per digit, without the general regex engine's per-call
/// setup and its shared cache pool (which the mapping threads otherwise contend for).
///
/// Built without Unicode classes: the haystacks are ASCII digits only, on which `\d` and `[0-9]`
/// (and every other class in the metadata) match alike, and the automaton stays small.
struct Prefix(dense::DFA<Vec<u32>>);

impl Prefix {
    fn new(src: &str) -> Prefix {
        let dfa = dense::Builder::new()
            .configure(
                dense::Config::new()
                    .start_kind(StartKind::Anchored)
                    .dfa_size_limit(Some(8 << 20)),
            )
            .syntax(
                syntax::Config::new()
                    .ignore_whitespace(true)
                    .unicode(false)
                    .utf8(false),
            )
            .thompson(thompson::Config::new().utf8(false))
            .build(src)
            .expect("libphonenumber metadata pattern compiles to a DFA (a test builds them all)");
        Prefix(dfa)
    }

    /// The end of the leftmost-first match that starts at 0, if any.
    fn match_end(&self, digits: &str) -> Option<usize> {
        let input = Input::new(digits).anchored(Anchored::Yes);
        // Search errors need quit bytes or a start kind we do not configure: none can occur.
        self.0
            .try_search_fwd(&input)
            .ok()
            .flatten()
            .map(|m| m.offset())
    }

    /// True when some match starts at 0.
    fn matches(&self, digits: &str) -> bool {
        let input = Input::new(digits).anchored(Anchored::Yes).earliest(true);
        self.0.try_search_fwd(&input).ok().flatten().is_some()
    }
}

struct Desc {
    /// The descriptor's pattern, which must match from the start of the number.
    re: Prefix,
    lengths: &'static [u16],
}

impl Desc {
    /// Same semantics as `phonenumber::metadata::Descriptor::is_match`.
    fn is_match(&self, value: &str) -> bool {
        if !self.lengths.is_empty() && !self.lengths.contains(&(value.len() as u16)) {
            return false;
        }
        self.re.matches(value)
    }
}

struct Compiled {
    general: Desc,
    /// The descriptors `phonenumber`'s `number_type` consults; a number is valid when the general
    /// pattern and any of these match (their order does not matter for validity).
    types: Vec<Desc>,
    /// The prefix pattern for finding a match, and the full regex for the transform rule's
    /// capture groups (used only when the prefix matches and the region has a transform).
    national_prefix_for_parsing: Option<(Prefix, Regex)>,
    international_prefix: Option<Prefix>,
    leading_digits: Option<Prefix>,
}

pub(super) struct Region {
    meta: &'static Metadata,
    compiled: OnceLock<Compiled>,
}

fn compile(src: &str) -> Regex {
    // Same options as the metadata loader (regex_cache defaults + ignore_whitespace).
    RegexBuilder::new(src)
        .ignore_whitespace(true)
        .size_limit(10 * (1 << 20))
        .dfa_size_limit(2 * (1 << 20))
        .build()
        .expect("libphonenumber metadata pattern compiles (it did in the phonenumber crate)")
}

fn desc(d: &'static Descriptor) -> Desc {
    // (The newline keeps a trailing `#` comment, possible under ignore_whitespace, from eating
    // the closing parenthesis.)
    Desc {
        re: Prefix::new(&format!("(?:{}\n)", d.national_number().as_str())),
        lengths: d.possible_length(),
    }
}

impl Region {
    fn c(&self) -> &Compiled {
        self.compiled.get_or_init(|| {
            let m = self.meta;
            let ds = m.descriptors();
            // Checked first: the usual kinds.
            let kinds = [
                ds.fixed_line(),
                ds.mobile(),
                ds.toll_free(),
                ds.premium_rate(),
                ds.shared_cost(),
                ds.voip(),
                ds.personal_number(),
                ds.pager(),
                ds.uan(),
                ds.voicemail(),
            ];
            Compiled {
                general: desc(ds.general()),
                types: kinds.into_iter().flatten().map(desc).collect(),
                national_prefix_for_parsing: m
                    .national_prefix_for_parsing()
                    .map(|r| (Prefix::new(r.as_str()), compile(r.as_str()))),
                international_prefix: m.international_prefix().map(|r| Prefix::new(r.as_str())),
                leading_digits: m.leading_digits().map(|r| Prefix::new(r.as_str())),
            }
        })
    }

    pub fn calling_code(&self) -> u16 {
        self.meta.country_code()
    }

    /// `number_type(meta, value) != Type::Unknown`.
    fn is_valid_type(&self, value: &str) -> bool {
        let c = self.c();
        c.general.is_match(value) && c.types.iter().any(|d| d.is_match(value))
    }

    /// `validator::length(meta, number, Type::Unknown)`, reduced to what callers need.
    fn length(&self, len: usize) -> Length {
        let g = self.meta.descriptors().general();
        let possible = g.possible_length();
        let local = g.possible_local_length();
        let len = len as u16;
        let Some(&min) = possible.first() else {
            return Length::Invalid;
        };
        if local.contains(&len) || len == min {
            Length::Possible
        } else if len < min {
            Length::TooShort
        } else if len > *possible.last().unwrap_or(&min) {
            Length::Invalid
        } else if possible.contains(&len) {
            Length::Possible
        } else {
            Length::Invalid
        }
    }

    /// The IDD (international call prefix) at the start of `digits`, as the parser strips it:
    /// returns the rest when the prefix matches at 0 and the next digit is not '0'.
    pub fn strip_idd<'d>(&self, digits: &'d str) -> Option<&'d str> {
        let end = self.c().international_prefix.as_ref()?.match_end(digits)?;
        (!digits[end..].starts_with('0')).then(|| &digits[end..])
    }
}

#[derive(PartialEq, Eq)]
enum Length {
    Possible,
    TooShort,
    Invalid,
}

pub(super) struct Engine {
    /// Index = calling code; regions in the database's order (main country first).
    by_code: Vec<Vec<Region>>,
    /// Index = alpha-2 code as 26 * letter + letter (uppercase ids).
    by_id: Vec<Option<(u16, usize)>>,
}

fn id_index(a: u8, b: u8) -> Option<usize> {
    (a.is_ascii_alphabetic() && b.is_ascii_alphabetic()).then(|| {
        (a.to_ascii_uppercase() - b'A') as usize * 26 + (b.to_ascii_uppercase() - b'A') as usize
    })
}

pub(super) fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let db = &*DATABASE;
        let mut by_code: Vec<Vec<Region>> = (0..1000).map(|_| Vec::new()).collect();
        let mut by_id = vec![None; 676];
        for code in 1u16..1000 {
            if let Some(metas) = db.by_code(&code) {
                for (i, meta) in metas.into_iter().enumerate() {
                    if let [a, b] = meta.id().as_bytes() {
                        if let Some(ix) = id_index(*a, *b) {
                            by_id[ix] = Some((code, i));
                        }
                    }
                    by_code[code as usize].push(Region {
                        meta,
                        compiled: OnceLock::new(),
                    });
                }
            }
        }
        Engine { by_code, by_id }
    })
}

impl Engine {
    /// The region for an ISO 3166-1 alpha-2 code (any case), if libphonenumber has metadata for it.
    pub fn region(&self, alpha2: &str) -> Option<&Region> {
        let [a, b] = alpha2.as_bytes() else {
            return None;
        };
        let (code, i) = self.by_id[id_index(*a, *b)?]?;
        Some(&self.by_code[code as usize][i])
    }

    fn regions(&self, code: u16) -> &[Region] {
        self.by_code
            .get(code as usize)
            .map_or(&[], |v| v.as_slice())
    }

    /// First 1–3 digit prefix that is a known calling code (the parser's rule).
    fn split_code<'d>(&self, digits: &'d str) -> Option<(u16, &'d str)> {
        for len in 1..=MAX_CC.min(digits.len()) {
            let code: u16 = digits[..len].parse().ok()?;
            if !self.regions(code).is_empty() {
                return Some((code, &digits[len..]));
            }
        }
        None
    }

    /// `validator::source_for`: which region's metadata applies to a national number; the flag
    /// is true when that region was chosen because the number is valid there.
    fn source_for(&self, code: u16, national: &str) -> Option<(&Region, bool)> {
        let regions = self.regions(code);
        match regions.len() {
            0 => None,
            1 => Some((&regions[0], false)),
            _ => regions.iter().find_map(|r| match &r.c().leading_digits {
                Some(ld) => ld.matches(national).then_some((r, false)),
                None => r.is_valid_type(national).then_some((r, true)),
            }),
        }
    }

    /// `phonenumber::is_valid` for a parsed number.
    pub fn is_valid(&self, p: &Parsed) -> bool {
        self.source_for(p.code, &p.national)
            .is_some_and(|(r, known_valid)| known_valid || r.is_valid_type(&p.national))
    }

    /// `phonenumber::parse(None, "+" + digits)`; `digits` must be ASCII digits. (The
    /// differential tests compare it with the crate; callers want only valid numbers.)
    #[cfg(test)]
    pub fn parse_international(&self, digits: &str) -> Option<Parsed> {
        self.parse_international_checked(digits).map(|(p, _)| p)
    }

    /// `parse_international`, kept only when `is_valid`.
    pub fn parse_international_valid(&self, digits: &str) -> Option<Parsed> {
        self.parse_international_checked(digits)
            .and_then(|(p, valid)| valid.unwrap_or_else(|| self.is_valid(&p)).then_some(p))
    }

    /// The parse, and its validity when the parse already knows it: validity looks up the
    /// source region of the national number, which the parse has just done for the same digits
    /// unless stripping a national prefix changed them.
    fn parse_international_checked(&self, digits: &str) -> Option<(Parsed, Option<bool>)> {
        // is_viable needs three digits after '+'; country_code needs more than MIN_NSN.
        if digits.len() < 3 || digits.starts_with('0') {
            return None;
        }
        let (code, national) = self.split_code(digits)?;
        let trimmed = national.trim_start_matches('0');
        let source = self.source_for(code, trimmed);
        let national = match source {
            Some((r, _)) => strip_national(r, national),
            None => national.to_string(),
        };
        let p = finish(code, national)?;
        let valid = (p.national == trimmed).then(|| {
            source.is_some_and(|(r, known_valid)| known_valid || r.is_valid_type(&p.national))
        });
        Some((p, valid))
    }

    /// `phonenumber::parse(Some(region), digits)`; `digits` must be ASCII digits.
    pub fn parse_national(&self, region: &Region, digits: &str) -> Option<Parsed> {
        if digits.len() < MIN_NSN {
            return None;
        }
        let (code, national) = match region.strip_idd(digits) {
            Some(rest) => {
                if rest.len() <= MIN_NSN || rest.starts_with('0') {
                    return None;
                }
                self.split_code(rest)?
            }
            None => {
                let code = region.calling_code();
                let national = match code_prefix_len(digits, code) {
                    Some(len)
                        if !region.c().general.is_match(digits)
                            || region.length(digits.len()) != Length::Possible =>
                    {
                        &digits[len..]
                    }
                    _ => digits,
                };
                (code, national)
            }
        };
        // The parser uses the supplied region's metadata here, whatever the calling code.
        finish(code, strip_national(region, national))
    }
}

/// The parser's national-prefix handling: `helper::national_number`, then a second strip of the
/// plain national prefix, kept only when the result is not too short.
fn strip_national(r: &Region, national: &str) -> String {
    let mut potential = national_number(r, national);
    if let Some(p) = r.meta.national_prefix() {
        if !p.is_empty() && potential.starts_with(p) {
            potential.drain(..p.len());
        }
    }
    if r.length(potential.len()) != Length::TooShort {
        potential
    } else {
        national.to_string()
    }
}

/// `helper::national_number`: strip the national prefix for parsing (and apply the transform).
fn national_number(r: &Region, national: &str) -> String {
    let c = r.c();
    let Some((prefix, parsing)) = c.national_prefix_for_parsing.as_ref() else {
        let stripped = r
            .meta
            .national_prefix()
            .and_then(|p| national.strip_prefix(p));
        return stripped.unwrap_or(national).to_string();
    };
    let Some(end) = prefix.match_end(national) else {
        return national.to_string();
    };
    let transform = r.meta.national_prefix_transform_rule();
    let last_present = parsing
        .captures(national)
        .is_some_and(|caps| caps.get(caps.len() - 1).is_some());
    match transform {
        Some(t) if last_present => {
            let viable = c.general.is_match(national);
            let transformed = parsing.replace(national, t).into_owned();
            if viable && !c.general.is_match(&transformed) {
                national.to_string()
            } else {
                transformed
            }
        }
        // The crate's "keep if viable and the rest is not" test compares the number with itself
        // here (start is 0), so the prefix is always stripped.
        _ => national[end..].to_string(),
    }
}

/// Final length checks and `NationalNumber::from_str` limits.
fn finish(code: u16, national: String) -> Option<Parsed> {
    if national.len() < MIN_NSN || national.len() > MAX_NSN {
        return None;
    }
    let rest = national.trim_start_matches('0');
    let value: u64 = rest.parse().ok()?;
    if value >= 1 << 56 {
        return None;
    }
    Some(Parsed { code, national })
}

#[cfg(test)]
mod tests {
    use super::*;
    use phonenumber::country::Id;

    #[test]
    fn calling_code_prefixes() {
        assert_eq!(code_prefix_len("16505551212", 1), Some(1));
        assert_eq!(code_prefix_len("442079460958", 44), Some(2));
        assert_eq!(code_prefix_len("358401234567", 358), Some(3));
        assert_eq!(code_prefix_len("35", 358), None);
        assert_eq!(code_prefix_len("4420", 4), Some(1));
        assert_eq!(code_prefix_len("5442", 44), None);
        for v in [1u16, 7, 20, 44, 99, 100, 358, 999] {
            let mut s = String::new();
            push_u16(&mut s, v);
            assert_eq!(code_prefix_len(&format!("{s}123"), v), Some(s.len()), "{v}");
        }
    }

    #[test]
    fn every_region_compiles() {
        let (mut patterns, mut bytes) = (0, 0);
        for r in engine().by_code.iter().flatten() {
            let c = r.c();
            patterns += 1 + c.types.len();
            bytes += std::iter::once(&c.general)
                .chain(&c.types)
                .map(|d| d.re.0.memory_usage())
                .sum::<usize>();
        }
        assert!(patterns > 1000, "{patterns}");
        // Every country's automata together (a table whose rows come from everywhere) stay
        // small next to the memory a run may use: about 1.9 MB.
        assert!(bytes < 8 << 20, "{bytes} bytes");
    }

    /// The crate itself: (code, national with zeros) when it parses, and its validity.
    fn lib(region: Option<Id>, s: &str) -> Option<(Parsed, bool)> {
        let n = phonenumber::parse(region, s).ok()?;
        Some((
            Parsed {
                code: n.code().value(),
                national: n.national().to_string(),
            },
            n.is_valid(),
        ))
    }

    fn ours_intl(d: &str) -> Option<(Parsed, bool)> {
        let e = engine();
        let parsed = e.parse_international(d).map(|p| {
            let v = e.is_valid(&p);
            (p, v)
        });
        let valid = parsed.clone().filter(|(_, v)| *v).map(|(p, _)| p);
        assert_eq!(e.parse_international_valid(d), valid, "valid +{d}");
        parsed
    }

    fn ours_nat(region: &str, d: &str) -> Option<(Parsed, bool)> {
        let e = engine();
        let r = e.region(region).unwrap();
        e.parse_national(r, d).map(|p| {
            let v = e.is_valid(&p);
            (p, v)
        })
    }

    fn check(region: &str, d: &str) {
        let id: Id = region.parse().unwrap();
        assert_eq!(
            ours_nat(region, d),
            lib(Some(id), d),
            "national {region} {d}"
        );
        assert_eq!(
            ours_intl(d),
            lib(None, &format!("+{d}")),
            "international +{d}"
        );
    }

    /// Every region's example numbers, read nationally (bare, with the national prefix, with the
    /// calling code) and internationally.
    #[test]
    fn matches_crate_on_metadata_examples() {
        let e = engine();
        let mut n = 0;
        for (code, regions) in e.by_code.iter().enumerate() {
            for r in regions {
                let ds = r.meta.descriptors();
                let id = r.meta.id();
                for d in [
                    ds.fixed_line(),
                    ds.mobile(),
                    ds.toll_free(),
                    ds.voip(),
                    ds.uan(),
                    ds.premium_rate(),
                ]
                .into_iter()
                .flatten()
                {
                    let Some(ex) = d.example() else { continue };
                    let full = format!("{code}{ex}");
                    assert_eq!(ours_intl(&full), lib(None, &format!("+{full}")), "+{full}");
                    if id == "001" {
                        continue;
                    }
                    let np = r.meta.national_prefix().unwrap_or("");
                    for s in [ex.to_string(), format!("{np}{ex}"), full.clone()] {
                        check(id, &s);
                        n += 1;
                    }
                }
            }
        }
        assert!(n > 1000, "{n}");
    }

    /// Random digit strings in a spread of regions (all of them share their patterns' quirks).
    #[test]
    fn matches_crate_on_random_digits() {
        let regions = [
            "US", "CA", "GB", "DE", "FR", "IT", "ES", "NL", "BE", "CH", "AT", "IE", "SE", "NO",
            "DK", "FI", "PL", "PT", "GR", "RU", "UA", "TR", "IL", "AE", "SA", "IN", "PK", "BD",
            "CN", "HK", "TW", "JP", "KR", "SG", "MY", "ID", "PH", "TH", "VN", "AU", "NZ", "ZA",
            "NG", "KE", "EG", "MA", "BR", "AR", "MX", "CO", "CL", "PE", "VE", "JM", "PR", "AG",
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let (mut valid_nat, mut valid_intl) = (0, 0);
        // The crate's own parser is slow unoptimized; draw fewer numbers in debug builds.
        let n = if cfg!(debug_assertions) { 1200 } else { 4000 };
        for i in 0..n {
            let region = regions[i % regions.len()];
            let len = 2 + (next() % 16) as usize;
            let mut d: String = (0..len)
                .map(|_| (b'0' + (next() % 10) as u8) as char)
                .collect();
            // Bias towards realistic starts: the region's trunk prefix or calling code.
            match next() % 4 {
                0 => d.insert(0, '0'),
                1 => {
                    let code = engine().region(region).unwrap().calling_code();
                    d.insert_str(0, &code.to_string());
                }
                _ => {}
            }
            check(region, &d);
            if ours_nat(region, &d).is_some_and(|(_, v)| v) {
                valid_nat += 1;
            }
            if ours_intl(&d).is_some_and(|(_, v)| v) {
                valid_intl += 1;
            }
        }
        eprintln!("random: valid national {valid_nat}, valid international {valid_intl}");
        assert!(
            valid_nat > n / 27 && valid_intl > n / 50,
            "too few valid numbers drawn"
        );
    }
}
