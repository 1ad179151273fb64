//! Secrets (the access token, database URLs with passwords) never print themselves.

use serde::{Deserialize, Deserializer};
use std::fmt;

/// A string that must not reach logs, debug output or error messages.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The only way to read the value; call it at the point of use.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.trim().is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

/// A Postgres URL with its password masked, for messages that must name the target.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("redacted"));
            }
            parsed.to_string()
        }
        Err(_) => "[unparseable url]".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_debug_and_display_never_show_the_value() {
        let s = Secret::new("EAAB-very-secret-token");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(format!("{s}"), "[redacted]");
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Holder {
            token: Secret,
        }
        let printed = format!("{:?}", Holder { token: s.clone() });
        assert!(!printed.contains("very-secret"), "{printed}");
        assert_eq!(s.expose(), "EAAB-very-secret-token");
    }

    #[test]
    fn redact_url_masks_the_password_only() {
        let r = redact_url("postgres://alice:hunter2@db.example:5432/wh");
        assert!(!r.contains("hunter2"));
        assert!(r.contains("alice") && r.contains("db.example"));
    }
}
