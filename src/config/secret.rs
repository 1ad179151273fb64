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

/// Where a Postgres URL points, as `host:port/db` only: no user, no password, no query
/// parameters (`?password=`, `sslkey=` paths and the like), for every message that must
/// name a database.
pub fn redact_url(url: &str) -> String {
    use std::str::FromStr;
    // sqlx's reading of the URL is the one that is connected to (`?host=`, `?port=`,
    // `?dbname=` and the PG* environment count).
    if let Ok(opts) = sqlx::postgres::PgConnectOptions::from_str(url) {
        return shown(&opts);
    }
    match url::Url::parse(url) {
        Ok(parsed) => {
            let host = parsed.host_str().unwrap_or("localhost");
            let port = parsed.port().unwrap_or(5432);
            let db = parsed.path().trim_start_matches('/');
            if db.is_empty() {
                format!("{host}:{port}")
            } else {
                format!("{host}:{port}/{db}")
            }
        }
        Err(_) => "[unparseable url]".to_string(),
    }
}

/// `host:port/db` of parsed options: where a connection goes, as every message names it.
pub fn shown(opts: &sqlx::postgres::PgConnectOptions) -> String {
    let place = match opts.get_socket() {
        Some(dir) => dir.display().to_string(),
        None => opts.get_host().to_string(),
    };
    match opts.get_database() {
        Some(db) => format!("{place}:{}/{db}", opts.get_port()),
        None => format!("{place}:{}", opts.get_port()),
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
    fn redact_url_keeps_only_host_port_and_database() {
        let r = redact_url("postgres://u:secret@h:5433/db?password=x&sslmode=require");
        assert_eq!(r, "h:5433/db");
        let r = redact_url("postgres://alice:hunter2@db.example/wh");
        assert_eq!(r, "db.example:5432/wh");
        let r = redact_url("postgresql://u@h/db?sslkey=/home/u/.postgresql/u.key");
        assert_eq!(r, "h:5432/db");
    }
}
