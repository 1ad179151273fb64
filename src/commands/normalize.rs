//! `capi-sync normalize`: JSON lines in, one JSON line out per input, so users can debug their
//! match keys and compare us with another implementation on the same inputs.

use crate::normalize::{self, NormalizeContext, Normalized, PiiField, PiiInput};
use std::io::{BufRead, Write};

#[derive(serde::Deserialize)]
struct Line {
    field: String,
    value: serde_json::Value,
    #[serde(default)]
    country: Option<String>,
    #[serde(default)]
    external_id: Option<String>,
}

/// Processes every line of `input`; a bad line gets an `error` answer, never stops the stream.
pub fn run(
    input: impl BufRead,
    mut output: impl Write,
    default_country: Option<&str>,
) -> std::io::Result<()> {
    for line in input.lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let answer = answer(&line, default_country);
        serde_json::to_writer(&mut output, &answer)?;
        output.write_all(b"\n")?;
    }
    output.flush()
}

fn answer(line: &str, default_country: Option<&str>) -> serde_json::Value {
    let parsed: Line = match serde_json::from_str(line) {
        Ok(l) => l,
        Err(e) => {
            return serde_json::json!({
                "error": format!("not a JSON object with `field` and `value`: {e}")
            })
        }
    };
    let mut out = serde_json::json!({ "field": parsed.field, "value": parsed.value });
    let Some(field) = PiiField::from_key(&parsed.field) else {
        out["error"] = format!(
            "`{}` is not a hashed customer field (em, ph, fn, ln, ct, st, zp, country, db, ge, external_id)",
            parsed.field
        )
        .into();
        return out;
    };
    let text = match &parsed.value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        _ => {
            out["error"] = "value must be a string or a number".into();
            return out;
        }
    };
    let input = match &parsed.value {
        serde_json::Value::Number(n) if n.is_i64() => PiiInput::Int(n.as_i64().unwrap_or_default()),
        _ => PiiInput::Text(&text),
    };
    let ctx = NormalizeContext {
        default_country,
        row_country: parsed.country.as_deref(),
        external_id_raw: parsed.external_id.as_deref() == Some("raw"),
    };
    match normalize::normalize(field, input, &ctx) {
        Ok(Normalized::Plain(n)) => {
            let raw_external = field == PiiField::ExternalId && ctx.external_id_raw;
            out["sha256"] = if raw_external {
                serde_json::Value::Null
            } else {
                normalize::sha256_hex(&n).into()
            };
            out["normalized"] = n.into();
        }
        Ok(Normalized::AlreadyHashed(h)) => {
            out["normalized"] = h.clone().into();
            out["sha256"] = h.into();
        }
        Err(reason) => {
            out["error"] = reason.code().into();
            out["reason"] = reason.to_string().into();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &str, default_country: Option<&str>) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        run(input.as_bytes(), &mut out, default_country).unwrap();
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn answers_each_line_with_normalized_value_and_hash() {
        let out = lines(
            r#"{"field": "em", "value": " John_Smith@Gmail.com "}
{"field": "ph", "value": "020 7946 0958", "country": "gb"}
{"field": "ph", "value": 6502530000}
"#,
            Some("us"),
        );
        assert_eq!(out.len(), 3);
        assert_eq!(out[0]["normalized"], "john_smith@gmail.com");
        assert_eq!(
            out[0]["sha256"],
            "62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f"
        );
        assert_eq!(out[1]["normalized"], "442079460958");
        assert_eq!(out[2]["normalized"], "16502530000");
        assert_eq!(out[2]["value"], 6502530000u64);
    }

    #[test]
    fn bad_lines_get_errors_and_the_stream_goes_on() {
        let out = lines(
            "not json\n{\"field\": \"em\", \"value\": \"nope\"}\n{\"field\": \"lead_id\", \"value\": \"1\"}\n{\"field\": \"ge\", \"value\": \"Female\"}\n",
            None,
        );
        assert_eq!(out.len(), 4);
        assert!(out[0]["error"].as_str().unwrap().contains("JSON"));
        assert_eq!(out[1]["error"], "invalid_email");
        assert!(out[2]["error"]
            .as_str()
            .unwrap()
            .contains("not a hashed customer field"));
        assert_eq!(out[3]["normalized"], "f");
    }
}
