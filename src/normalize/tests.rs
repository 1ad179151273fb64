//! Cross-field tests: the API, the policy table's examples, the §8.5 disagreement rows (our
//! column), and properties (idempotence, no panics, hash shape).

use super::*;
use proptest::prelude::*;

fn ctx() -> NormalizeContext<'static> {
    NormalizeContext::default()
}

fn us() -> NormalizeContext<'static> {
    NormalizeContext {
        default_country: Some("us"),
        ..Default::default()
    }
}

fn n(field: PiiField, s: &str, c: &NormalizeContext<'_>) -> Result<String, DropReason> {
    normalize(field, PiiInput::Text(s), c).map(Normalized::into_string)
}

#[test]
fn keys_round_trip() {
    for f in PiiField::ALL {
        assert_eq!(PiiField::from_key(f.key()), Some(f));
    }
    assert_eq!(PiiField::from_key("EM"), None);
    assert_eq!(PiiField::ExternalId.key(), "external_id");
    let codes: std::collections::HashSet<_> = DropReason::ALL.iter().map(|r| r.code()).collect();
    assert_eq!(codes.len(), DropReason::ALL.len());
    for r in DropReason::ALL {
        assert!(r
            .code()
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'_'));
        assert!(!r.to_string().is_empty());
    }
}

#[test]
fn sha256_known_values() {
    assert_eq!(
        sha256_hex(""),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    // Meta's documented examples [D-cust].
    assert_eq!(
        sha256_hex("john_smith@gmail.com"),
        "62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f"
    );
    assert!(sha256_hex("16505551212").starts_with("e323ec62"));
    assert!(sha256_hex("19970216").starts_with("01acdbf6"));
    assert!(sha256_hex("us").starts_with("79adb2a2"));
}

#[test]
fn already_hashed_passes_through() {
    let h = "ABCDEF1234567890ABCDEF1234567890ABCDEF1234567890ABCDEF1234567890";
    for f in PiiField::ALL {
        assert_eq!(
            normalize(f, PiiInput::Text(&format!("  {h}\n")), &ctx()),
            Ok(Normalized::AlreadyHashed(h.to_ascii_lowercase())),
            "{f}"
        );
        assert_eq!(
            normalize_and_hash(f, PiiInput::Text(h), &ctx()).unwrap(),
            h.to_ascii_lowercase()
        );
    }
    assert!(is_sha256_hex(&format!(" {h} ")));
    assert!(!is_sha256_hex(&h[..63]));
    assert!(!is_sha256_hex("2a6a84e9e44441afbd75cc19ce28be37"));
    // 32 hex (MD5) is an ordinary value: invalid as an email, hashed as a name or an ID.
    let md5 = "2a6a84e9e44441afbd75cc19ce28be37";
    assert_eq!(n(PiiField::Em, md5, &ctx()), Err(DropReason::InvalidEmail));
    assert_eq!(n(PiiField::Ln, md5, &ctx()).unwrap(), md5);
    assert_eq!(
        normalize_and_hash(PiiField::ExternalId, PiiInput::Text(md5), &ctx()).unwrap(),
        sha256_hex(md5)
    );
}

#[test]
fn external_id_modes() {
    let raw = NormalizeContext {
        external_id_raw: true,
        ..Default::default()
    };
    assert_eq!(
        normalize_and_hash(PiiField::ExternalId, PiiInput::Text(" User-123 "), &raw).unwrap(),
        "User-123"
    );
    assert_eq!(
        normalize_and_hash(PiiField::ExternalId, PiiInput::Text(" User-123 "), &ctx()).unwrap(),
        sha256_hex("user-123")
    );
    assert_eq!(
        normalize_and_hash(PiiField::ExternalId, PiiInput::Int(12345), &raw).unwrap(),
        "12345"
    );
    assert_eq!(
        normalize_and_hash(PiiField::ExternalId, PiiInput::Int(-7), &ctx()).unwrap(),
        sha256_hex("-7")
    );
    assert_eq!(
        normalize(PiiField::ExternalId, PiiInput::Text("  "), &raw),
        Err(DropReason::Empty)
    );
}

#[test]
fn input_types() {
    let d = chrono::NaiveDate::from_ymd_opt(1997, 2, 16).unwrap();
    assert_eq!(
        normalize(PiiField::Db, PiiInput::Date(d), &ctx()),
        Ok(Normalized::Plain("19970216".into()))
    );
    assert_eq!(
        normalize(PiiField::Em, PiiInput::Date(d), &ctx()),
        Err(DropReason::WrongType)
    );
    assert_eq!(
        normalize(PiiField::Db, PiiInput::Int(19970216), &ctx())
            .unwrap()
            .as_str(),
        "19970216"
    );
    assert_eq!(
        normalize(PiiField::Ph, PiiInput::Int(16505551212), &us())
            .unwrap()
            .as_str(),
        "16505551212"
    );
    assert_eq!(
        normalize(PiiField::Zp, PiiInput::Int(2134), &us())
            .unwrap()
            .as_str(),
        "02134"
    );
    assert_eq!(
        normalize(PiiField::Ge, PiiInput::Int(1), &ctx()),
        Err(DropReason::UnknownGender)
    );
    assert_eq!(
        normalize(PiiField::Fn, PiiInput::Text(""), &ctx()),
        Err(DropReason::Empty)
    );
    assert_eq!(
        normalize(PiiField::Ct, PiiInput::Int(5), &ctx()),
        Err(DropReason::Empty)
    );
}

/// The examples in the policy table ("Our policy where the sources disagree").
#[test]
fn policy_table_examples() {
    let gb = NormalizeContext {
        default_country: Some("GB"),
        ..Default::default()
    };
    assert_eq!(
        n(PiiField::Ph, "(650) 555-1212", &us()).unwrap(),
        "16505551212"
    );
    assert_eq!(
        n(PiiField::Ph, "020 7946 0958", &gb).unwrap(),
        "442079460958"
    );
    assert_eq!(n(PiiField::Ct, "São Paulo", &ctx()).unwrap(), "sãopaulo");
    assert_eq!(n(PiiField::Country, "USA", &ctx()).unwrap(), "us");
    assert_eq!(
        n(PiiField::Country, "United States of America", &ctx()).unwrap(),
        "us"
    );
    assert_eq!(n(PiiField::Country, "South Korea", &ctx()).unwrap(), "kr");
    assert_eq!(n(PiiField::Ge, "female", &ctx()).unwrap(), "f");
    assert_eq!(n(PiiField::Ge, "woman", &ctx()).unwrap(), "f");
    assert_eq!(n(PiiField::Ge, "F", &ctx()).unwrap(), "f");
    assert_eq!(n(PiiField::Ge, "male", &ctx()).unwrap(), "m");
    assert_eq!(n(PiiField::Ge, "man", &ctx()).unwrap(), "m");
    assert_eq!(n(PiiField::Ge, "M", &ctx()).unwrap(), "m");
    assert_eq!(n(PiiField::Db, "1997-02-16", &ctx()).unwrap(), "19970216");
    assert_eq!(n(PiiField::Db, "2/16/1997", &ctx()).unwrap(), "19970216");
    assert_eq!(n(PiiField::Db, "16.2.1997", &ctx()).unwrap(), "19970216");
    // Meta's documented examples [D-cust].
    assert_eq!(
        n(PiiField::Em, "John_Smith@gmail.com", &ctx()).unwrap(),
        "john_smith@gmail.com"
    );
    assert_eq!(n(PiiField::Fn, "Mary", &ctx()).unwrap(), "mary");
    assert_eq!(n(PiiField::Fn, "정", &ctx()).unwrap(), "정");
    assert_eq!(n(PiiField::Fn, "Valéry", &ctx()).unwrap(), "valéry");
    assert_eq!(n(PiiField::Country, "United States", &ctx()).unwrap(), "us");
    assert_eq!(n(PiiField::Zp, "M1 1AE", &ctx()).unwrap(), "m11ae");
}

/// §8.5 "Disagreements between implementations": our column for each row.
#[test]
fn disagreement_table_rows() {
    use PiiField::*;
    let none = ctx();
    let gb = NormalizeContext {
        default_country: Some("gb"),
        ..Default::default()
    };
    let fr = NormalizeContext {
        default_country: Some("fr"),
        ..Default::default()
    };
    let rows: &[(
        PiiField,
        &str,
        &NormalizeContext<'_>,
        Result<&str, DropReason>,
    )] = &[
        (
            Em,
            " John.Smith@Gmail.COM ",
            &none,
            Ok("john.smith@gmail.com"),
        ),
        (
            Em,
            "john smith@gmail.com",
            &none,
            Err(DropReason::InvalidEmail),
        ),
        (Ph, "+1 (650) 555-1212", &none, Ok("16505551212")),
        (Ph, "(650)555-1212", &none, Ok("6505551212")),
        (Ph, "(650)555-1212", &us(), Ok("16505551212")),
        (Ph, "0044 20 7946 0958", &none, Ok("442079460958")),
        (Ph, "+44 (0)20 7946 0958", &none, Ok("442079460958")),
        (Ph, "06 12 34 56 78", &none, Ok("612345678")),
        (Ph, "06 12 34 56 78", &fr, Ok("33612345678")),
        (Ph, "1-800-FLOWERS", &us(), Err(DropReason::InvalidPhone)),
        (Fn, "O'Brien", &none, Ok("obrien")),
        (Fn, "Mary-Jane", &none, Ok("maryjane")),
        (Fn, "Valéry", &none, Ok("valéry")),
        (Ct, "St. Louis", &none, Ok("stlouis")),
        (Ct, "São Paulo", &none, Ok("sãopaulo")),
        (Ct, "Winston-Salem", &none, Ok("winstonsalem")),
        (St, "California", &none, Ok("ca")),
        (St, "N.Y.", &none, Ok("ny")),
        (St, "New South Wales", &none, Ok("newsouthwales")),
        (Zp, "94105-1234", &none, Ok("94105")),
        (Zp, "NR9 5AL", &gb, Ok("nr95al")),
        (Zp, " 1234 AB", &none, Ok("1234ab")),
        (Country, "United States", &none, Ok("us")),
        (Country, "USA", &none, Ok("us")),
        (Country, "United States of America", &none, Ok("us")),
        (Country, "South Korea", &none, Ok("kr")),
        (Db, "1997-02-16", &none, Ok("19970216")),
        (Db, "2/16/1997", &none, Ok("19970216")),
        (Ge, "Male", &none, Ok("m")),
        (Ge, "woman", &none, Ok("f")),
        (ExternalId, " User-123 ", &none, Ok("user-123")),
    ];
    for (field, input, c, want) in rows {
        assert_eq!(
            n(*field, input, c).as_deref().map_err(|e| *e),
            *want,
            "{field} {input:?}"
        );
    }
}

#[test]
fn nfc_before_everything() {
    // Decomposed "é" (e + U+0301) hashes like the precomposed one for every text field.
    assert_eq!(n(PiiField::Fn, "Vale\u{301}ry", &ctx()).unwrap(), "valéry");
    assert_eq!(
        n(PiiField::Em, "Jose\u{301}@example.com", &ctx()).unwrap(),
        "josé@example.com"
    );
    assert_eq!(
        n(PiiField::ExternalId, "Ide\u{301}", &ctx()).unwrap(),
        "idé"
    );
}

fn contexts() -> Vec<NormalizeContext<'static>> {
    let mut v = vec![NormalizeContext::default()];
    for c in [
        "us", "gb", "de", "fr", "in", "br", "jp", "au", "it", "ca", "mx", "ru",
    ] {
        v.push(NormalizeContext {
            default_country: Some(c),
            ..Default::default()
        });
    }
    v.push(NormalizeContext {
        external_id_raw: true,
        ..Default::default()
    });
    v
}

/// Strings that look like field values more often than random Unicode does.
fn value_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "\\PC{0,24}",
        "[ +0-9()\\-.]{0,20}",
        "(\\+|00)?[0-9]{6,14}",
        "[a-zA-Z0-9._%+\\-]{1,12}@[a-zA-Z0-9\\-]{1,10}\\.[a-zA-Z]{2,4}",
        "[0-9]{1,4}[-/. ][0-9]{1,2}[-/. ][0-9]{1,4}",
        "[A-Za-zÀ-ÿ' .\\-]{0,20}",
        "[0-9A-Za-z \\-]{0,12}",
    ]
}

/// Whether `p` (E.164 digits) is also a valid national number in the context's own country —
/// the one case where a phone number does not re-normalize to itself (see `phone`).
fn is_foreign_collision(p: &str, c: &NormalizeContext<'_>) -> bool {
    let e = phone_meta::engine();
    let Some(r) = c.country().and_then(|cc| e.region(cc)) else {
        return false;
    };
    !p.starts_with(&r.calling_code().to_string())
        && e.parse_national(r, p)
            .is_some_and(|parsed| e.is_valid(&parsed))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn idempotent_and_total(s in value_strategy(), ci in 0usize..14) {
        let c = contexts()[ci];
        for f in PiiField::ALL {
            // Never panics; and a normalized value normalizes to itself.
            if let Ok(out) = normalize(f, PiiInput::Text(&s), &c) {
                let again = normalize(f, PiiInput::Text(out.as_str()), &c);
                if f == PiiField::Ph && is_foreign_collision(out.as_str(), &c) {
                    continue;
                }
                prop_assert_eq!(again, Ok(out.clone()), "field {} input {:?}", f, s);
            }
        }
    }

    #[test]
    fn hashes_are_lowercase_hex(s in value_strategy(), ci in 0usize..13) {
        let c = contexts()[ci];
        for f in PiiField::ALL {
            if let Ok(h) = normalize_and_hash(f, PiiInput::Text(&s), &c) {
                prop_assert_eq!(h.len(), 64);
                prop_assert!(h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
            }
        }
    }

    #[test]
    fn ints_never_panic(v in any::<i64>(), ci in 0usize..14) {
        let c = contexts()[ci];
        for f in PiiField::ALL {
            if let Ok(out) = normalize(f, PiiInput::Int(v), &c) {
                if f == PiiField::Ph && is_foreign_collision(out.as_str(), &c) {
                    continue;
                }
                prop_assert_eq!(normalize(f, PiiInput::Text(out.as_str()), &c), Ok(out.clone()));
            }
        }
    }

    #[test]
    fn phones_in_context_renormalize(d in "[1-9][0-9]{6,13}", plus in any::<bool>(), ci in 0usize..13) {
        let c = contexts()[ci];
        let s = if plus { format!("+{d}") } else { d };
        if let Ok(out) = normalize(PiiField::Ph, PiiInput::Text(&s), &c) {
            if !is_foreign_collision(out.as_str(), &c) {
                prop_assert_eq!(normalize(PiiField::Ph, PiiInput::Text(out.as_str()), &c), Ok(out.clone()));
            }
            // With a country the output is a valid E.164 number, read alike with no country.
            if c.country().is_some() {
                prop_assert_eq!(normalize(PiiField::Ph, PiiInput::Text(&format!("+{}", out.as_str())), &ctx()), Ok(out.clone()));
            }
        }
    }
}

#[test]
fn hex_digits_of_every_byte_value_in_every_position() {
    for start in 0..=255u8 {
        let bytes: [u8; 32] = std::array::from_fn(|i| start.wrapping_add((i * 37) as u8));
        let want: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            std::str::from_utf8(&super::hex_lower(&bytes)).unwrap(),
            want
        );
    }
}

#[test]
fn memoized_results_equal_fresh_ones_on_hits_misses_and_evictions() {
    // Far more distinct inputs than the memo has slots, each seen several times, including
    // values that drop and values that differ only in case or spacing.
    let mut inputs: Vec<String> = (0..2500)
        .map(|i| match i % 5 {
            0 => format!(" Name{} ", i % 900),
            1 => format!("NAME{}", i % 900),
            2 => format!("19{:02}-0{}-1{}", i % 100, 1 + i % 9, i % 10),
            3 => "??".to_string(),
            _ => [
                "US",
                "United States",
                "Texas",
                "tx",
                "São Paulo",
                "F",
                "male",
            ][i % 7]
                .into(),
        })
        .collect();
    inputs.push("x".repeat(super::memo::MAX_INPUT));
    inputs.push("y".repeat(super::memo::MAX_INPUT + 1));
    let c = ctx();
    for _ in 0..2 {
        for f in [
            PiiField::Fn,
            PiiField::Ln,
            PiiField::Ct,
            PiiField::St,
            PiiField::Country,
            PiiField::Ge,
        ] {
            for s in &inputs {
                assert_eq!(
                    normalize_and_hash(f, PiiInput::Text(s), &c),
                    super::normalize_and_hash_uncached(f, PiiInput::Text(s), &c),
                    "{f} {s:?}"
                );
            }
        }
    }
}

#[test]
fn memoized_zips_follow_the_country_in_context() {
    // The same 6–8 digit input is cut to 5 digits in a US context only; alternating contexts
    // on the same thread must never return the other context's result.
    let contexts = [
        us(),
        ctx(),
        NormalizeContext {
            default_country: Some("gb"),
            ..Default::default()
        },
        NormalizeContext {
            default_country: Some("gb"),
            row_country: Some("United States"),
            ..Default::default()
        },
        NormalizeContext {
            default_country: Some("us"),
            row_country: Some("India"),
            ..Default::default()
        },
    ];
    let inputs = [
        "123456",
        "1234567",
        "12345678",
        "123456789",
        "94105-1234",
        " 02134",
        "SW1A 1AA",
        "1",
        "",
        "560001",
    ];
    for round in 0..3 {
        for (i, s) in inputs.iter().enumerate() {
            for k in 0..contexts.len() {
                let c = &contexts[(i + k + round) % contexts.len()];
                assert_eq!(
                    normalize_and_hash(PiiField::Zp, PiiInput::Text(s), c),
                    super::normalize_and_hash_uncached(PiiField::Zp, PiiInput::Text(s), c),
                    "{s:?} {c:?}"
                );
            }
        }
    }
    assert_eq!(
        normalize_and_hash(PiiField::Zp, PiiInput::Text("123456"), &us()),
        Ok(Hashed::Digest(HexDigest::of("12345")))
    );
    assert_eq!(
        normalize_and_hash(PiiField::Zp, PiiInput::Text("123456"), &ctx()),
        Ok(Hashed::Digest(HexDigest::of("123456")))
    );
}
