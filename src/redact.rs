//! Removing row values from messages others wrote (Postgres errors, Graph API answers) before
//! they reach a run's error, our tables or the logs: such a message may quote the value that
//! failed, which may be customer data.

/// Words after which Postgres quotes a name (a column, a constraint), not a value: those
/// names stay readable, every other quoted text is replaced.
const NAME_WORDS: &[&str] = &[
    "column",
    "relation",
    "table",
    "constraint",
    "index",
    "type",
    "domain",
    "schema",
    "sequence",
    "function",
    "view",
    "trigger",
    "encoding",
    "database",
    "role",
];

/// What a removed value is replaced with.
const HIDDEN: &str = "\"…\"";

/// A Postgres error message fit to show. Data exceptions (SQLSTATE class 22) and integrity
/// violations (class 23) quote row values (`value "15551234567" is out of range for type
/// integer`, `invalid input syntax for type integer: "jane@example.com"`): every quoted value
/// is replaced, names of columns, relations and constraints stay, and the SQLSTATE is kept.
/// Other classes quote only names and statements, and are shown as they are. The DETAIL
/// (`Key (email)=(jane@example.com) already exists.`) is never part of the message.
pub fn postgres_message(code: Option<&str>, message: &str) -> String {
    let Some(code) = code.filter(|c| c.starts_with("22") || c.starts_with("23")) else {
        return message.to_string();
    };
    // `...: "value"` ends the message with the value, which may itself hold quotes.
    let head = match message.find(": \"") {
        Some(at) => format!("{}: {HIDDEN}", &message[..at]),
        None => message.to_string(),
    };
    format!(
        "{} (SQLSTATE {code}; values are not shown: they may be customer data)",
        hide_quoted_values(&head)
    )
}

/// Replaces each double-quoted span that does not follow a name word (see [`NAME_WORDS`]).
fn hide_quoted_values(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('"') {
        let before = &rest[..open];
        let Some(len) = rest[open + 1..].find('"') else {
            // An unpaired quote: whatever follows may be a value cut short.
            out.push_str(before);
            out.push_str(HIDDEN);
            return out;
        };
        let quoted = &rest[open..open + len + 2];
        out.push_str(before);
        let word = out
            .split_whitespace()
            .next_back()
            .unwrap_or_default()
            .to_ascii_lowercase();
        if NAME_WORDS.contains(&word.as_str()) || quoted == HIDDEN {
            out.push_str(quoted);
        } else {
            out.push_str(HIDDEN);
        }
        rest = &rest[open + len + 2..];
    }
    out.push_str(rest);
    out
}

/// A Graph API error text fit to store: Meta's `error_user_msg` may echo a parameter's value
/// (an IP address, a click id, a raw external_id). Quoted text (single or double quotes) that
/// is not a plain parameter name, and any word holding `@`, are replaced.
pub fn graph_message(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let opens = (c == '"' || c == '\'' || c == '“' || c == '‘')
            && (i == 0 || !chars[i - 1].is_alphanumeric());
        if opens {
            let close = match c {
                '“' => '”',
                '‘' => '’',
                q => q,
            };
            if let Some(len) = chars[i + 1..].iter().position(|&x| x == close) {
                let inner: String = chars[i + 1..i + 1 + len].iter().collect();
                let is_name = is_parameter_name(&inner);
                if is_name {
                    out.push(c);
                    out.push_str(&inner);
                    out.push(close);
                } else {
                    out.push_str(HIDDEN);
                }
                i += len + 2;
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    out.split(' ')
        .map(|w| if w.contains('@') { "…" } else { w })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A parameter path as Meta writes it (`user_data.em`, `data[0].event_time`): lowercase,
/// short, and without the long digit runs of ids, phone numbers and timestamps.
fn is_parameter_name(text: &str) -> bool {
    let starts_like_a_name = text
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let mut digit_run = 0;
    starts_like_a_name
        && text.len() <= 40
        && text.chars().all(|c| {
            digit_run = if c.is_ascii_digit() { digit_run + 1 } else { 0 };
            digit_run < 4 && (c.is_ascii_lowercase() || c.is_ascii_digit() || "_.[]".contains(c))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_exceptions_keep_the_sqlstate_and_lose_the_value() {
        for (code, message, value, kept) in [
            (
                "22P02",
                "invalid input syntax for type integer: \"jane@example.com\"",
                "jane",
                "invalid input syntax for type integer",
            ),
            (
                "22003",
                "value \"15551234567\" is out of range for type integer",
                "15551234567",
                "is out of range for type integer",
            ),
            (
                "22P02",
                "invalid input syntax for type integer: \"19x0 \"quoted\" tail\"",
                "19x0",
                "type integer",
            ),
            (
                "22023",
                "invalid value \"Jane\" for \"MM\"",
                "Jane",
                "invalid value",
            ),
        ] {
            let m = postgres_message(Some(code), message);
            assert!(!m.contains(value), "{m}");
            assert!(m.contains(kept), "{m}");
            assert!(m.contains(&format!("SQLSTATE {code}")), "{m}");
        }
    }

    #[test]
    fn integrity_violations_keep_names_and_lose_values() {
        let m = postgres_message(
            Some("23505"),
            "duplicate key value violates unique constraint \"users_email_key\"",
        );
        assert!(m.contains("\"users_email_key\""), "{m}");
        let m = postgres_message(
            Some("23502"),
            "null value in column \"email\" of relation \"people\" violates not-null constraint",
        );
        assert!(
            m.starts_with(
                "null value in column \"email\" of relation \"people\" violates not-null constraint"
            ),
            "{m}"
        );
        let m = postgres_message(
            Some("23514"),
            "new row for relation \"people\" violates check constraint \"people_phone_check\" near \"+1 415 555 0100\"",
        );
        assert!(
            m.contains("\"people_phone_check\"") && !m.contains("555"),
            "{m}"
        );
    }

    #[test]
    fn other_errors_are_shown_as_they_are() {
        assert_eq!(
            postgres_message(Some("42703"), "column \"emial\" does not exist"),
            "column \"emial\" does not exist"
        );
        assert_eq!(postgres_message(None, "closed"), "closed");
    }

    #[test]
    fn graph_messages_lose_quoted_values_and_addresses() {
        let m = graph_message(
            "The parameter 'client_ip_address' has an invalid value: '203.0.113.9' for \"Jane Roe\"; contact jane@example.com. It's fine; 'data[0].event_time' 'fb.1.1554763741205.abc'",
        );
        for gone in [
            "203.0.113.9",
            "Jane Roe",
            "jane@example.com",
            "1554763741205",
        ] {
            assert!(!m.contains(gone), "{m}");
        }
        assert!(
            m.contains("'client_ip_address'") && m.contains("It's fine"),
            "{m}"
        );
    }
}
