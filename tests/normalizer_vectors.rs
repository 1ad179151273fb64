//! Reference vectors: cases from Meta's normalizers' test suites (Parameter Builder, Python, PHP
//! and Node SDKs), Segment's destination, Meta's documentation examples with published hashes,
//! and capi-reference.md's policy examples — each with our expected output.
//!
//! For each case: `normalize` must return `expected` (null = dropped, with the `drop` code);
//! where `expected` differs from the source implementation's `source_normalized`, the case must
//! carry a `deviation` naming the policy row that decides it; and where they agree and the source
//! published a SHA-256, our hash must equal it.

use capi_sync::normalize::{
    normalize, normalize_and_hash, sha256_hex, NormalizeContext, Normalized, PiiField, PiiInput,
};
use chrono::Datelike;
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize, Default)]
#[serde(default)]
struct Ctx {
    default_country: Option<String>,
    row_country: Option<String>,
    external_id_raw: bool,
}

#[derive(Deserialize)]
struct Case {
    field: String,
    input: Value,
    #[serde(default)]
    ctx: Ctx,
    expected: Option<String>,
    #[serde(default)]
    passthrough: bool,
    drop: Option<String>,
    source_normalized: Option<String>,
    source_sha256: Option<String>,
    source: String,
    #[serde(rename = "impl")]
    implementation: String,
    deviation: Option<String>,
    #[serde(default)]
    year_relative: bool,
}

/// `{YEAR}` and `{YEAR+1}` in year-relative cases.
fn years(s: &str, on: bool) -> String {
    if !on {
        return s.to_string();
    }
    let y = chrono::Utc::now().year();
    s.replace("{YEAR+1}", &(y + 1).to_string())
        .replace("{YEAR}", &y.to_string())
}

fn load() -> Vec<Case> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/normalizer_vectors.json"
    );
    let text = std::fs::read_to_string(path).expect("read normalizer_vectors.json");
    serde_json::from_str(&text).expect("parse normalizer_vectors.json")
}

#[test]
fn every_reference_vector_normalizes_and_hashes_as_expected_or_declares_its_deviation() {
    let cases = load();
    assert!(cases.len() >= 300, "{} cases", cases.len());
    let mut failures = Vec::new();
    let mut hashes_proved = 0;
    for (i, c) in cases.iter().enumerate() {
        let field = PiiField::from_key(&c.field)
            .unwrap_or_else(|| panic!("case {i}: unknown field {}", c.field));
        assert!(
            !c.source.is_empty() && !c.implementation.is_empty(),
            "case {i}: source and impl are required"
        );
        let ctx = NormalizeContext {
            default_country: c.ctx.default_country.as_deref(),
            row_country: c.ctx.row_country.as_deref(),
            external_id_raw: c.ctx.external_id_raw,
        };
        let text;
        let input = match &c.input {
            Value::String(s) => {
                text = years(s, c.year_relative);
                PiiInput::Text(&text)
            }
            Value::Number(n) => PiiInput::Int(n.as_i64().expect("integer input")),
            other => panic!("case {i}: input {other}"),
        };
        let expected = c.expected.as_deref().map(|e| years(e, c.year_relative));
        let source = c
            .source_normalized
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(|s| years(s, c.year_relative));

        // A deviation is declared exactly where we differ from the source (or, for 32-hex values,
        // where the source passes through what we hash).
        if expected != source && c.deviation.is_none() {
            failures.push(format!(
                "case {i} ({} {:?}): differs from {} without a deviation",
                c.field, c.input, c.implementation
            ));
        }

        let got = normalize(field, input, &ctx);
        let want = match (&expected, c.passthrough) {
            (Some(e), true) => Ok(Normalized::AlreadyHashed(e.clone())),
            (Some(e), false) => Ok(Normalized::Plain(e.clone())),
            (None, _) => Err(c.drop.clone().unwrap_or_default()),
        };
        let got_cmp = got.clone().map_err(|r| r.code().to_string());
        if got_cmp != want {
            failures.push(format!(
                "case {i} ({} {:?} ctx {:?}): got {got_cmp:?}, want {want:?}",
                c.field, c.input, c.ctx.default_country
            ));
            continue;
        }

        // Hashes.
        let hashed = normalize_and_hash(field, input, &ctx);
        if let Some(e) = &expected {
            let want_hash =
                if c.passthrough || (field == PiiField::ExternalId && ctx.external_id_raw) {
                    e.clone()
                } else {
                    sha256_hex(e)
                };
            assert_eq!(hashed.as_deref(), Ok(want_hash.as_str()), "case {i}");
            if source.as_deref() == Some(e.as_str()) && !c.passthrough {
                if let Some(h) = &c.source_sha256 {
                    if &sha256_hex(e) != h {
                        failures.push(format!(
                            "case {i}: sha256({e:?}) differs from the source's published hash"
                        ));
                    }
                    hashes_proved += 1;
                }
            }
        } else {
            assert!(hashed.is_err(), "case {i}");
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        hashes_proved > 500,
        "only {hashes_proved} hashes checked against the sources"
    );
}

#[test]
fn the_vectors_cover_every_field_at_least_ten_times() {
    let cases = load();
    for f in PiiField::ALL {
        let n = cases.iter().filter(|c| c.field == f.key()).count();
        assert!(n >= 10, "{}: {n} cases", f.key());
    }
}
