//! How capi-sync opens its Postgres sessions (the warehouse pool, the state pool and the
//! model locks' own sessions): the URL's TLS files checked before the first connection, the
//! session settings that keep a dead or stuck session from lasting, one actionable line for
//! why a connection failed, and whether a live session is encrypted.
//!
//! TLS follows libpq's `sslmode` (`disable`, `prefer` (the default), `require`, `verify-ca`,
//! `verify-full`) with `sslrootcert`, `sslcert` and `sslkey` in the URL's query (or
//! `PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY`), as sqlx reads them. Without
//! `sslrootcert`, `verify-ca`/`verify-full` trust the public web CAs (webpki roots); managed
//! databases with their own CA (RDS, Cloud SQL) need their bundle in `sslrootcert`.
//!
//! Unlike libpq, `verify-ca` checks the host name as well: sqlx's verifier skips only the
//! name-mismatch error that rustls returned before 0.23.24 (sqlx issue 3793). Stricter,
//! never weaker; a host must be reached by a name its certificate bears.

use crate::config::{shown, Secret};
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use sqlx::{Executor, Postgres};
use std::str::FromStr;
use std::time::Duration;

/// A connection that could not be opened, said in one line: the cause and what to change.
/// It carries no source on purpose: the cause is already in the line, and printing a chain
/// of sqlx's nested errors repeated it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConnectError(pub String);

/// The database a connection goes to, for messages.
#[derive(Debug, Clone)]
pub struct Target {
    /// `host:port/db`, with no user, password or query parameters.
    pub shown: String,
    pub host: String,
    /// Reached through a Unix socket.
    pub socket: bool,
    pub ssl_mode: PgSslMode,
    /// Where the trusted CA certificates come from: a path, or "an inline PEM".
    pub root_cert: Option<String>,
}

impl Target {
    /// Only the machine itself can read a loopback or Unix-socket session's traffic.
    pub fn is_local(&self) -> bool {
        if self.socket || self.host.eq_ignore_ascii_case("localhost") {
            return true;
        }
        let bare = self.host.trim_start_matches('[').trim_end_matches(']');
        bare.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
    }
}

pub fn ssl_mode_name(mode: PgSslMode) -> &'static str {
    match mode {
        PgSslMode::Disable => "disable",
        PgSslMode::Allow => "allow",
        PgSslMode::Prefer => "prefer",
        PgSslMode::Require => "require",
        PgSslMode::VerifyCa => "verify-ca",
        PgSslMode::VerifyFull => "verify-full",
    }
}

/// The URL's connection options and target, its TLS files read and checked first so that a
/// wrong path is named as such rather than surfacing as a failed handshake.
pub fn parse(url: &Secret) -> Result<(PgConnectOptions, Target), ConnectError> {
    let opts = PgConnectOptions::from_str(url.expose()).map_err(|e| {
        ConnectError(format!(
            "the URL is not a valid Postgres URL: {}",
            scrub(&sqlx_cause(&e), Some(url))
        ))
    })?;
    let files = TlsFiles::of(url.expose());
    let mut opts = opts;
    // libpq: "if a root CA file exists, the behavior of sslmode=require will be the same as
    // that of verify-ca". sqlx would accept any certificate under `require`, so a URL written
    // for libpq would lose the check its author asked for.
    if matches!(opts.get_ssl_mode(), PgSslMode::Require) && files.root_cert.is_some() {
        opts = opts.ssl_mode(PgSslMode::VerifyCa);
    }
    let ssl_mode = opts.get_ssl_mode();
    let root_cert = files
        .root_cert
        .as_ref()
        .map(|(_, source)| source.describe());
    if !matches!(ssl_mode, PgSslMode::Disable) {
        files.check()?;
    }
    let target = Target {
        shown: shown(&opts),
        host: opts.get_host().to_string(),
        socket: opts.get_socket().is_some() || opts.get_host().starts_with('/'),
        ssl_mode,
        root_cert,
    };
    Ok((opts, target))
}

/// Where a TLS file parameter came from and what it holds.
#[derive(Debug, Clone)]
enum FileSource {
    Path(String),
    Inline(String),
}

impl FileSource {
    fn of(value: String) -> FileSource {
        // sqlx's own rule for telling inline PEM from a path.
        let trimmed = value.trim();
        if trimmed.starts_with("-----BEGIN") && trimmed.ends_with("-----") {
            FileSource::Inline(value)
        } else {
            FileSource::Path(value)
        }
    }

    fn describe(&self) -> String {
        match self {
            FileSource::Path(p) => p.clone(),
            FileSource::Inline(_) => "an inline PEM".into(),
        }
    }

    fn read(&self, param: &str) -> Result<String, ConnectError> {
        match self {
            FileSource::Inline(text) => Ok(text.clone()),
            FileSource::Path(path) => std::fs::read(path)
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                .map_err(|e| ConnectError(format!("{param}: cannot read {path}: {e}"))),
        }
    }
}

/// `sslrootcert`, `sslcert` and `sslkey` as sqlx will use them: the URL's last value of a
/// parameter (under any of sqlx's spellings), else the libpq environment variable.
struct TlsFiles {
    root_cert: Option<(&'static str, FileSource)>,
    cert: Option<(&'static str, FileSource)>,
    key: Option<(&'static str, FileSource)>,
}

impl TlsFiles {
    fn of(url: &str) -> TlsFiles {
        let query: Vec<(String, String)> = url::Url::parse(url)
            .map(|u| u.query_pairs().into_owned().collect())
            .unwrap_or_default();
        let find = |param: &'static str, keys: &[&str], env: &str| {
            query
                .iter()
                .rev()
                .find(|(k, _)| keys.contains(&k.as_str()))
                .map(|(_, v)| v.clone())
                .or_else(|| std::env::var(env).ok())
                .map(|v| (param, FileSource::of(v)))
        };
        TlsFiles {
            root_cert: find(
                "sslrootcert",
                &["sslrootcert", "ssl-root-cert", "ssl-ca"],
                "PGSSLROOTCERT",
            ),
            cert: find("sslcert", &["sslcert", "ssl-cert"], "PGSSLCERT"),
            key: find("sslkey", &["sslkey", "ssl-key"], "PGSSLKEY"),
        }
    }

    fn check(&self) -> Result<(), ConnectError> {
        if let Some((param, source)) = &self.root_cert {
            require_pem(param, source, "CERTIFICATE", "a PEM certificate")?;
        }
        match (&self.cert, &self.key) {
            (Some((param, cert)), Some((key_param, key))) => {
                require_pem(param, cert, "CERTIFICATE", "a PEM certificate")?;
                let text = key.read(key_param)?;
                if text.contains("ENCRYPTED PRIVATE KEY") || text.contains("Proc-Type: 4,ENCRYPTED")
                {
                    return Err(ConnectError(format!(
                        "{key_param}: {} is encrypted with a passphrase, which capi-sync cannot use; \
                         decrypt it (openssl pkey -in KEY -out plain.key) and keep it readable only by capi-sync",
                        key.describe()
                    )));
                }
                if !text.contains("PRIVATE KEY-----") {
                    return Err(ConnectError(format!(
                        "{key_param}: {} holds no PEM private key (-----BEGIN PRIVATE KEY-----)",
                        key.describe()
                    )));
                }
                Ok(())
            }
            (Some((param, _)), None) | (None, Some((param, _))) => Err(ConnectError(format!(
                "{param} is set without {}: a client certificate needs both sslcert and sslkey",
                if *param == "sslcert" {
                    "sslkey"
                } else {
                    "sslcert"
                }
            ))),
            (None, None) => Ok(()),
        }
    }
}

fn require_pem(
    param: &str,
    source: &FileSource,
    label: &str,
    what: &str,
) -> Result<(), ConnectError> {
    let text = source.read(param)?;
    if text.contains(&format!("-----BEGIN {label}-----")) {
        Ok(())
    } else {
        Err(ConnectError(format!(
            "{param}: {} holds no {what} (-----BEGIN {label}-----)",
            source.describe()
        )))
    }
}

/// The innermost message of an sqlx error (its Display repeats its source's).
fn sqlx_cause(e: &sqlx::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Removes anything that could carry a credential from a message: any Postgres URL in it is
/// cut down to `host:port/db`, and the URL's password is masked wherever it appears.
pub fn scrub(message: &str, url: Option<&Secret>) -> String {
    static URL_IN_TEXT: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r#"postgres(?:ql)?://[^\s"'`)]+"#).expect("valid regex")
    });
    let mut text = URL_IN_TEXT
        .replace_all(message, |c: &regex::Captures| {
            // Punctuation after a URL belongs to the sentence.
            let url = c[0].trim_end_matches([':', ',', '.', ';']);
            format!("{}{}", crate::config::redact_url(url), &c[0][url.len()..])
        })
        .into_owned();
    if let Some(password) = url
        .and_then(|u| url::Url::parse(u.expose()).ok())
        .and_then(|u| u.password().map(str::to_string))
    {
        // A very short password would match ordinary text; such a password is the
        // operator's bigger problem.
        if password.len() >= 4 {
            let decoded = url::form_urlencoded::parse(format!("p={password}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default();
            text = text.replace(&password, "[redacted]");
            if decoded.len() >= 4 {
                text = text.replace(&decoded, "[redacted]");
            }
        }
    }
    text
}

/// One line for why a connection to `target` failed, naming what to change.
pub fn explain(err: &sqlx::Error, target: &Target, url: Option<&Secret>) -> ConnectError {
    let mode = ssl_mode_name(target.ssl_mode);
    let host = &target.host;
    let line = match err {
        sqlx::Error::Tls(inner) if inner.to_string().contains("does not support TLS") => format!(
            "the server at {} does not accept TLS, and sslmode={mode} requires it; set sslmode=disable or prefer, or turn ssl on in the server",
            target.shown
        ),
        sqlx::Error::Tls(inner) => match inner.downcast_ref::<rustls::Error>() {
            Some(tls) => explain_tls(tls, target),
            None => format!("TLS with {host} failed (sslmode={mode}): {inner}"),
        },
        sqlx::Error::Io(io) => {
            let tls = io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>());
            match tls {
                Some(tls) => explain_tls(tls, target),
                None => match io.kind() {
                    std::io::ErrorKind::ConnectionRefused => format!(
                        "cannot connect to {}: connection refused (is the server running, and are host and port right?)",
                        target.shown
                    ),
                    std::io::ErrorKind::NotFound if target.socket => format!(
                        "cannot connect to {}: no Postgres socket there",
                        target.shown
                    ),
                    _ => format!("cannot connect to {}: {io}", target.shown),
                },
            }
        }
        sqlx::Error::Database(db) => {
            let message = db.message();
            let code = db.code().map(|c| c.to_string()).unwrap_or_default();
            if message.contains("no pg_hba.conf entry")
                && (message.contains("no encryption") || message.contains("SSL off"))
            {
                format!(
                    "the server accepts only encrypted connections from here ({message}); set sslmode=verify-full with sslrootcert (or sslmode=require)"
                )
            } else if code == "28P01" || code == "28000" {
                format!("{message} (SQLSTATE {code}); check the user and password of the URL")
            } else {
                format!("{message} (SQLSTATE {code})")
            }
        }
        sqlx::Error::PoolTimedOut => format!(
            "no connection to {} within the connect timeout: the server did not answer",
            target.shown
        ),
        sqlx::Error::Configuration(inner) => {
            let text = inner.to_string();
            if text.contains("no keys found") {
                "sslkey: the file holds no private key capi-sync can read (PKCS#8, PKCS#1 or SEC1 PEM)".into()
            } else {
                format!("the connection settings are not usable: {text}")
            }
        }
        other => sqlx_cause(other),
    };
    ConnectError(scrub(&line, url))
}

fn explain_tls(err: &rustls::Error, target: &Target) -> String {
    use rustls::{CertificateError, Error};
    let host = &target.host;
    let trusted = match &target.root_cert {
        Some(source) => format!("the CA certificates of sslrootcert ({source})"),
        None => "a public CA (no sslrootcert is set)".to_string(),
    };
    match err {
        Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => format!(
            "certificate verify failed for host {host}: the server's certificate is not issued for that name; \
             connect with a host name the certificate names (sqlx checks the name under sslmode=verify-ca too)"
        ),
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => format!(
            "certificate verify failed for host {host}: the server's certificate is not signed by {trusted}; \
             set sslrootcert=<the CA bundle of your database provider, e.g. RDS's global-bundle.pem>"
        ),
        Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => format!("certificate verify failed for host {host}: the server's certificate has expired"),
        Error::InvalidCertificate(other) => {
            format!("certificate verify failed for host {host}: {other:?}")
        }
        Error::AlertReceived(alert) => format!(
            "the server at {} ended the TLS handshake ({alert:?}); if it asks for a client certificate, \
             set sslcert and sslkey to one it trusts",
            target.shown
        ),
        other => format!("TLS with {host} failed: {other}"),
    }
}

/// How long a state-database session may wait or stay stuck.
#[derive(Debug, Clone, Copy)]
pub struct StateLimits {
    /// Any one statement.
    pub statement_timeout: Duration,
    /// Waiting for a row or table lock (never for the model lock, which is only tried).
    pub lock_timeout: Duration,
    /// A transaction left open by a stalled process holds its row locks no longer.
    pub idle_in_transaction: Duration,
}

impl Default for StateLimits {
    fn default() -> Self {
        StateLimits {
            statement_timeout: Duration::from_secs(60),
            lock_timeout: Duration::from_secs(10),
            idle_in_transaction: Duration::from_secs(300),
        }
    }
}

/// The server probes an idle client after 60 s, every 10 s, and drops it after 6 unanswered
/// probes: a session whose client vanished (a killed container, a dropped NAT entry) ends
/// within about two minutes, and with it any model lock it held.
///
/// These are the server's keepalives. sqlx 0.8 gives no access to its socket, so the client
/// side cannot turn on `SO_KEEPALIVE`; a client waiting on a dead server is bounded by the
/// run's deadline and the statement timeouts instead.
pub const SERVER_KEEPALIVES: [(&str, &str); 3] = [
    ("tcp_keepalives_idle", "60"),
    ("tcp_keepalives_interval", "10"),
    ("tcp_keepalives_count", "6"),
];

/// Session settings of the state database's sessions, sent at connection start (so that a
/// `RESET` returns to them).
pub fn state_session_options(schema: &str, limits: &StateLimits) -> Vec<(&'static str, String)> {
    let ms = |d: Duration| format!("{}ms", d.as_millis());
    let mut options = vec![
        ("search_path", schema.to_string()),
        ("statement_timeout", ms(limits.statement_timeout)),
        ("lock_timeout", ms(limits.lock_timeout)),
        (
            "idle_in_transaction_session_timeout",
            ms(limits.idle_in_transaction),
        ),
    ];
    options.extend(SERVER_KEEPALIVES.iter().map(|(k, v)| (*k, v.to_string())));
    options
}

/// Turns on the server's keepalives for a warehouse session. Set after connecting rather than
/// in the startup packet, because poolers such as PgBouncer refuse startup `options`; and
/// best-effort, because a Postgres-wire warehouse that is not Postgres may not know them.
pub async fn set_server_keepalives(conn: &mut sqlx::PgConnection) {
    let sql: String = SERVER_KEEPALIVES
        .iter()
        .map(|(k, v)| format!("SET {k} = {v};"))
        .collect();
    if let Err(e) = conn.execute(sqlx::raw_sql(&sql)).await {
        tracing::debug!(error = %e, "the warehouse does not take TCP keepalive settings");
    }
}

/// Whether a session is encrypted, as the server sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encryption {
    pub ssl: bool,
    pub version: Option<String>,
    pub cipher: Option<String>,
}

pub async fn encryption<'e, E>(session: E) -> Result<Encryption, sqlx::Error>
where
    E: Executor<'e, Database = Postgres>,
{
    let (ssl, version, cipher): (bool, Option<String>, Option<String>) =
        sqlx::query_as("SELECT ssl, version, cipher FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(session)
            .await?;
    Ok(Encryption {
        ssl,
        version,
        cipher,
    })
}

/// What `check` says of a connection's encryption, and whether it is a warning: plaintext
/// to another machine carries customer data readable on the network.
pub fn describe_encryption(target: &Target, enc: &Encryption) -> (bool, String) {
    let mode = ssl_mode_name(target.ssl_mode);
    if enc.ssl {
        let how = format!(
            "{} {}",
            enc.version.as_deref().unwrap_or("TLS"),
            enc.cipher.as_deref().unwrap_or("")
        );
        let verified = match target.ssl_mode {
            PgSslMode::VerifyFull => "the server's certificate and host name verified".to_string(),
            // sqlx 0.8 checks the name under verify-ca too: with the rustls it now builds
            // with, its verifier no longer recognises the name-mismatch error it means to skip.
            PgSslMode::VerifyCa => "the server's certificate and host name verified".to_string(),
            _ if target.is_local() => "the server's certificate not verified".to_string(),
            _ => "the server's certificate not verified: set sslmode=verify-full with sslrootcert to rule out a man in the middle".to_string(),
        };
        (
            false,
            format!("encrypted ({}; sslmode={mode}; {verified})", how.trim()),
        )
    } else if target.is_local() {
        (
            false,
            format!("not encrypted (sslmode={mode}; a loopback connection)"),
        )
    } else {
        (
            true,
            format!(
                "NOT encrypted (sslmode={mode}) to {}: rows cross the network in plaintext; set sslmode=verify-full with sslrootcert (or sslmode=require)",
                target.host
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(host: &str) -> Target {
        Target {
            shown: format!("{host}:5432/db"),
            host: host.into(),
            socket: false,
            ssl_mode: PgSslMode::Prefer,
            root_cert: None,
        }
    }

    #[test]
    fn loopback_hosts_are_local_and_others_are_not() {
        for h in ["localhost", "127.0.0.1", "127.8.9.1", "::1", "[::1]"] {
            assert!(target(h).is_local(), "{h}");
        }
        for h in ["db.example.com", "10.0.0.5", "localhost.example.com"] {
            assert!(!target(h).is_local(), "{h}");
        }
    }

    #[test]
    fn plaintext_to_a_remote_host_is_a_warning_and_to_loopback_is_not() {
        let plain = Encryption {
            ssl: false,
            version: None,
            cipher: None,
        };
        let (warn, line) = describe_encryption(&target("db.example.com"), &plain);
        assert!(warn && line.contains("NOT encrypted"), "{line}");
        let (warn, line) = describe_encryption(&target("127.0.0.1"), &plain);
        assert!(!warn && line.contains("not encrypted"), "{line}");
    }

    #[test]
    fn state_sessions_carry_their_timeouts_and_keepalives() {
        let opts = state_session_options("capi_sync", &StateLimits::default());
        let get = |k: &str| opts.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
        assert_eq!(get("statement_timeout").as_deref(), Some("60000ms"));
        assert_eq!(get("lock_timeout").as_deref(), Some("10000ms"));
        assert_eq!(
            get("idle_in_transaction_session_timeout").as_deref(),
            Some("300000ms")
        );
        assert_eq!(get("tcp_keepalives_idle").as_deref(), Some("60"));
    }

    #[test]
    fn scrub_cuts_urls_and_masks_the_password() {
        let url = Secret::new("postgres://u:s3cr%21t@h:5433/db");
        let text = scrub(
            "failed for postgres://u:s3cr%21t@h:5433/db?password=x: s3cr!t",
            Some(&url),
        );
        assert_eq!(text, "failed for h:5433/db: [redacted]");
    }

    #[test]
    fn a_missing_root_certificate_file_is_named_with_its_parameter() {
        let url =
            Secret::new("postgres://u@h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem");
        let err = parse(&url).unwrap_err().to_string();
        assert!(
            err.starts_with("sslrootcert: cannot read /nonexistent/ca.pem:"),
            "{err}"
        );
    }

    #[test]
    fn a_client_certificate_without_its_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("c.pem");
        std::fs::write(
            &cert,
            "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let url = Secret::new(format!(
            "postgres://u@h/db?sslmode=require&sslcert={}",
            cert.display()
        ));
        let err = parse(&url).unwrap_err().to_string();
        assert!(err.contains("sslcert is set without sslkey"), "{err}");
    }
}
