//! em, fn/ln, ge, external_id. Inputs arrive NFC and trimmed, and are not 64-hex.

use super::{lowercase, renfc, DropReason};
use unicode_normalization::char::is_combining_mark;

/// em: lowercase; must look like an address (`local@domain.tld`), else dropped.
///
/// Meta's rule is only "trim, lowercase" [D-cust]; our policy adds the validity check (the
/// Parameter Builder does the same with an RFC-2822-like pattern). We never delete characters to
/// make an address valid (the PHP SDK's sanitizer does). Accepted:
/// * local part: 1–64 bytes of letters/digits (any script) and ``!#$%&'*+-/=?^_`{|}~.``;
///   no leading/trailing dot, no `..`. Quoted local parts are not accepted.
/// * domain: ≥2 dot-separated labels of letters/digits (any script) and inner `-`, ≤63 bytes
///   each, ≤253 in all; the TLD is ≥2 letters or an `xn--` label. No IP literals.
pub(super) fn email(t: &str) -> Result<String, DropReason> {
    let e = lowercase(t);
    if is_email(&e) {
        Ok(e)
    } else {
        Err(DropReason::InvalidEmail)
    }
}

fn is_email(e: &str) -> bool {
    if e.is_ascii() {
        // Nearly every address: one pass over the bytes, same rules.
        return ascii_email_ok(e.as_bytes());
    }
    let Some((local, domain)) = e.split_once('@') else {
        return false;
    };
    email_parts_ok(local, domain)
}

/// Local-part characters besides letters and digits.
const LOCAL_SYMBOLS: &[u8] = b"!#$%&'*+-/=?^_`{|}~.";

/// Byte classes for the one-pass ASCII check.
const LOCAL: u8 = 1;
const LABEL: u8 = 2;
const ALPHA: u8 = 4;
static ASCII_CLASS: [u8; 128] = {
    let mut t = [0u8; 128];
    let mut i = 0;
    while i < LOCAL_SYMBOLS.len() {
        t[LOCAL_SYMBOLS[i] as usize] = LOCAL;
        i += 1;
    }
    t[b'-' as usize] |= LABEL;
    let mut c = 0u8;
    while c < 128 {
        if c.is_ascii_digit() {
            t[c as usize] = LOCAL | LABEL;
        } else if c.is_ascii_alphabetic() {
            t[c as usize] = LOCAL | LABEL | ALPHA;
        }
        c += 1;
    }
    t
};

/// `email_parts_ok` for an all-ASCII address, in one pass over its bytes.
fn ascii_email_ok(e: &[u8]) -> bool {
    let class = |b: u8| ASCII_CLASS[usize::from(b & 0x7f)];
    let Some(at) = e.iter().position(|&b| b == b'@') else {
        return false;
    };
    let (local, domain) = (&e[..at], &e[at + 1..]);
    if local.is_empty() || local.len() > 64 || domain.len() > 253 {
        return false;
    }
    let mut prev = b'.';
    for &b in local {
        if class(b) & LOCAL == 0 || (b == b'.' && prev == b'.') {
            return false;
        }
        prev = b;
    }
    if prev == b'.' {
        return false;
    }
    // Labels: non-empty, at most 63 bytes, letters/digits/inner '-'.
    let (mut labels, mut start, mut tld) = (0, 0, &domain[..0]);
    for i in 0..=domain.len() {
        if i < domain.len() && domain[i] != b'.' {
            if class(domain[i]) & LABEL == 0 {
                return false;
            }
            continue;
        }
        let label = &domain[start..i];
        if label.is_empty()
            || label.len() > 63
            || label[0] == b'-'
            || label[label.len() - 1] == b'-'
        {
            return false;
        }
        labels += 1;
        tld = label;
        start = i + 1;
    }
    let tld_letters = tld.len() >= 2 && tld.iter().all(|&b| class(b) & ALPHA != 0);
    labels >= 2 && (tld_letters || (tld.len() > 4 && tld.starts_with(b"xn--")))
}

/// The rules above for any address (letters and digits of any script).
fn email_parts_ok(local: &str, domain: &str) -> bool {
    if local.is_empty() || local.len() > 64 || domain.len() > 253 {
        return false;
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return false;
    }
    let local_ok = local.chars().all(|c| {
        (c.is_ascii() && (c.is_ascii_alphanumeric() || LOCAL_SYMBOLS.contains(&(c as u8))))
            || (!c.is_ascii() && c.is_alphanumeric())
    });
    if !local_ok {
        return false;
    }
    let label_chars_ok = |label: &str| {
        label.chars().all(|c| {
            c.is_ascii_alphanumeric() || c == '-' || (!c.is_ascii() && c.is_alphanumeric())
        })
    };
    let mut labels = 0;
    let mut last = "";
    for label in domain.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label_chars_ok(label);
        if !ok {
            return false;
        }
        labels += 1;
        last = label;
    }
    let tld_letters = last.chars().count() >= 2 && last.chars().all(char::is_alphabetic);
    let tld_ok = tld_letters || (last.len() > 4 && last.starts_with("xn--"));
    labels >= 2 && tld_ok
}

/// Apostrophe-like modifier letters (ʹ ʺ ʻ ʼ ʽ): Unicode calls them letters, but in names they
/// stand for the apostrophe and are typed interchangeably with `'` and `’`, so they go too.
fn is_apostrophe_letter(c: char) -> bool {
    matches!(c, '\u{2b9}' | '\u{2ba}' | '\u{2bb}' | '\u{2bc}' | '\u{2bd}')
}

/// Keep letters of any script, combining marks and (when `digits`) numbers; drop whitespace,
/// punctuation, symbols (emoji included) and controls. Lowercases; the result is NFC.
pub(super) fn letters(t: &str, digits: bool) -> String {
    if t.is_ascii() {
        let mut out = String::with_capacity(t.len());
        for b in t.bytes() {
            if b.is_ascii_alphabetic() || (digits && b.is_ascii_digit()) {
                out.push(b.to_ascii_lowercase() as char);
            }
        }
        return out;
    }
    let lower = t.to_lowercase();
    let out: String = lower
        .chars()
        .filter(|&c| {
            !is_apostrophe_letter(c)
                && (c.is_alphabetic() || is_combining_mark(c) || (digits && c.is_numeric()))
        })
        .collect();
    renfc(out)
}

/// fn, ln: lowercase; whitespace and punctuation (ASCII and Unicode) removed; letters of any
/// script, combining marks and digits kept. Policy row "fn, ln" (Meta: "lowercase, no
/// punctuation, UTF-8 for special characters"). Differs from the Parameter Builder, which keeps
/// Unicode punctuation (`mary–jane`) and emoji; digits are kept as it does.
pub(super) fn name(t: &str) -> Result<String, DropReason> {
    let out = letters(t, true);
    if out.is_empty() {
        Err(DropReason::Empty)
    } else {
        Ok(out)
    }
}

/// Words for `f`: English words and titles, and the usual words in French, Spanish, Portuguese,
/// German, Italian and Dutch. Compared after lowercasing, dropping apostrophes and one trailing
/// period (`Mrs.`, `ma'am`).
static FEMALE: &[&str] = &[
    "f",
    "female",
    "woman",
    "women",
    "girl",
    "lady",
    "mrs",
    "ms",
    "miss",
    "madam",
    "maam",
    "she",
    "her",
    "hers",
    "w",
    "femme",
    "feminin",
    "féminin",
    "feminine",
    "mujer",
    "femenino",
    "femenina",
    "feminino",
    "feminina",
    "mulher",
    "frau",
    "weiblich",
    "donna",
    "femmina",
    "vrouw",
    "vrouwelijk",
];
/// Words for `m` (same languages).
static MALE: &[&str] = &[
    "m",
    "male",
    "man",
    "men",
    "boy",
    "gentleman",
    "mr",
    "sir",
    "he",
    "him",
    "his",
    "masculine",
    "homme",
    "masculin",
    "hombre",
    "masculino",
    "varon",
    "varón",
    "mann",
    "männlich",
    "maennlich",
    "maschio",
    "uomo",
    "mannelijk",
];

/// ge: `f` or `m` from common words; anything else (other genders, "unknown", mixed values,
/// numbers) is dropped. Policy row "ge". The Parameter Builder's lists are English only; we also
/// take the common words of a few other languages (documented above).
pub(super) fn gender(t: &str) -> Result<String, DropReason> {
    let mut key = lowercase(t);
    key.retain(|c| !matches!(c, '\'' | '’' | 'ʼ'));
    if key.ends_with('.') {
        key.pop();
    }
    if FEMALE.contains(&key.as_str()) {
        Ok("f".to_string())
    } else if MALE.contains(&key.as_str()) {
        Ok("m".to_string())
    } else {
        Err(DropReason::UnknownGender)
    }
}

/// external_id (hashed mode): trimmed and lowercased, then hashed. Policy row "external_id".
/// Inner whitespace is part of the ID and kept (the Parameter Builder removes it).
pub(super) fn external_id(t: &str) -> Result<String, DropReason> {
    Ok(lowercase(t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn the_ascii_email_check_agrees_with_the_general_one(
            local in "[a-z0-9.!#%+_'~-]{0,12}",
            domain in "[a-z0-9.-]{0,16}",
        ) {
            let address = format!("{local}@{domain}");
            prop_assert_eq!(ascii_email_ok(address.as_bytes()), email_parts_ok(&local, &domain));
        }

        #[test]
        fn the_ascii_check_agrees_on_any_ascii(address in "[a-zA-Z0-9.@!#%+_'~ (-]{0,24}") {
            let general = address
                .split_once('@')
                .is_some_and(|(local, domain)| email_parts_ok(local, domain));
            prop_assert_eq!(ascii_email_ok(address.as_bytes()), general);
        }
    }

    #[test]
    fn emails() {
        for ok in [
            "john_smith@gmail.com",
            "a@b.co",
            "user.name+tag@domain.co.uk",
            "test'name@example.com",
            "x@sub-domain.example-site.com",
            "josé@exemplo.com.br",
            "user@xn--p1ai.xn--p1ai",
            "1@2.io",
        ] {
            assert_eq!(email(ok), Ok(ok.to_string()), "{ok}");
        }
        assert_eq!(
            email("John_Smith@Gmail.COM").unwrap(),
            "john_smith@gmail.com"
        );
        for bad in [
            "john smith@gmail.com",
            "a@b.c",
            "a@b",
            "test..x@example.com",
            ".test@example.com",
            "test.@example.com",
            "test@example.com.",
            "test@-example.com",
            "test@example-.com",
            "\"a b\"@c.d",
            "a\\@b@c.d",
            "foo(.bar)@baz.com/",
            "test@[1.2.3.4]",
            "a@b@c.com",
            "test@123.456",
            "@example.com",
            "test@",
        ] {
            assert_eq!(email(bad), Err(DropReason::InvalidEmail), "{bad}");
        }
    }

    #[test]
    fn names() {
        assert_eq!(name("O'Brien").unwrap(), "obrien");
        assert_eq!(name("Mary-Jane").unwrap(), "maryjane");
        assert_eq!(name("Valéry").unwrap(), "valéry");
        assert_eq!(name("정").unwrap(), "정");
        assert_eq!(name("Mary–Jane").unwrap(), "maryjane");
        assert_eq!(name("D’Angelo").unwrap(), "dangelo");
        assert_eq!(name("Ma‘ria").unwrap(), "maria");
        assert_eq!(name("Jean‐Luc").unwrap(), "jeanluc");
        assert_eq!(name("Pau·la").unwrap(), "paula");
        assert_eq!(name("Marʼyana").unwrap(), "maryana");
        assert_eq!(name("John😀").unwrap(), "john");
        assert_eq!(name("Agent007").unwrap(), "agent007");
        assert_eq!(name("ΟΔΥΣΣΕΑΣ").unwrap(), "οδυσσεας");
        assert_eq!(name("!!!"), Err(DropReason::Empty));
        // Decomposed input comes out composed (NFC), so both spellings hash alike.
        assert_eq!(name("Vale\u{301}ry").unwrap(), "valéry");
        assert_eq!(name("e-\u{301}").unwrap(), "é");
    }

    #[test]
    fn genders() {
        for f in [
            "F", "female", "Woman", "w", "Mrs.", "Ms", "miss", "ma'am", "Femme", "mujer",
            "Feminino", "Frau",
        ] {
            assert_eq!(gender(f).unwrap(), "f", "{f}");
        }
        for m in [
            "M",
            "Male",
            "man",
            "Mr.",
            "Boy",
            "he",
            "Homme",
            "hombre",
            "Masculino",
            "Mann",
            "männlich",
        ] {
            assert_eq!(gender(m).unwrap(), "m", "{m}");
        }
        for x in [
            "other",
            "x",
            "u",
            "non-binary",
            "male female",
            "m/f",
            "1",
            "2",
            "males",
            "man!",
        ] {
            assert_eq!(gender(x), Err(DropReason::UnknownGender), "{x}");
        }
    }

    #[test]
    fn external_ids() {
        assert_eq!(external_id("User-123").unwrap(), "user-123");
        assert_eq!(external_id("user id 456").unwrap(), "user id 456");
        assert_eq!(external_id("ID_WITH_ACCÉNTS").unwrap(), "id_with_accénts");
    }
}
