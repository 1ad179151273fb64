//! TLS to the warehouse and the state database against the local Postgres (SSL on, with a
//! self-signed certificate for `localhost`), proven by the server's own `pg_stat_ssl`; the
//! session limits of the state database; one clear line for each connection failure; and
//! connection strings shown as `host:port/db` only. The server is never reconfigured.

use crate::helpers::*;
use capi_sync::config::Secret;
use capi_sync::connection::{encryption, Encryption};
use capi_sync::source::Warehouse;
use capi_sync::state::{StateLimits, StateStore};
use sqlx::PgPool;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The test database's URL on another host name and with query parameters.
fn url_with(db: &TestDb, host: &str, query: &str) -> Secret {
    let mut url = url::Url::parse(&db.url).expect("test URL parses");
    url.set_host(Some(host)).expect("host is settable");
    url.set_query(Some(query));
    Secret::new(url.to_string())
}

/// The server's certificate (self-signed, for `localhost`), copied next to the test.
async fn server_certificate(db: &TestDb, dir: &Path) -> PathBuf {
    let path: String = sqlx::query_scalar("SHOW ssl_cert_file")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let pem = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("the server's certificate {path} is not readable: {e}"));
    let copy = dir.join("server-root.pem");
    std::fs::write(&copy, pem).unwrap();
    copy
}

async fn warehouse(url: &Secret) -> Warehouse {
    Warehouse::connect(url, Duration::from_secs(20), 2)
        .await
        .unwrap_or_else(|e| panic!("warehouse connects: {e}"))
}

async fn encrypted(pool: &PgPool) -> Encryption {
    encryption(pool).await.expect("pg_stat_ssl answers")
}

/// Whether the session holding this database's advisory (model) lock is encrypted.
async fn lock_session_ssl(db: &TestDb) -> bool {
    sqlx::query_scalar(
        "SELECT s.ssl FROM pg_locks l JOIN pg_stat_ssl s ON s.pid = l.pid
         WHERE l.locktype = 'advisory' AND l.granted
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(&db.pool)
    .await
    .expect("one session holds the model lock")
}

/// A new self-signed certificate and its key, in PEM.
fn self_signed(name: &str, ca: bool) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
    if ca {
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    }
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn connect_error(result: Result<Warehouse, capi_sync::source::SourceError>) -> String {
    match result {
        Ok(_) => panic!("the connection should have been refused"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn sslmode_require_encrypts_the_warehouse_the_state_pool_and_the_lock_session() {
    let db = TestDb::new().await;
    let url = url_with(&db, "127.0.0.1", "sslmode=require");
    let wh = warehouse(&url).await;
    let enc = encrypted(wh.pool()).await;
    assert!(enc.ssl, "{enc:?}");
    assert!(enc.version.as_deref().unwrap_or("").starts_with("TLS"));

    let state = StateStore::connect(&url, "capi_sync").await.unwrap();
    assert!(encrypted(state.pool()).await.ssl);
    let lock = state
        .try_lock_model("leads")
        .await
        .unwrap()
        .expect("lock free");
    assert!(lock_session_ssl(&db).await);
    lock.release().await;
}

#[tokio::test]
async fn sslmode_disable_connects_in_plaintext() {
    let db = TestDb::new().await;
    let url = url_with(&db, "127.0.0.1", "sslmode=disable");
    let wh = warehouse(&url).await;
    assert!(!encrypted(wh.pool()).await.ssl);
    let state = StateStore::connect(&url, "capi_sync").await.unwrap();
    assert!(!encrypted(state.pool()).await.ssl);
    let lock = state
        .try_lock_model("leads")
        .await
        .unwrap()
        .expect("lock free");
    assert!(!lock_session_ssl(&db).await);
    lock.release().await;
}

#[tokio::test]
async fn the_default_sslmode_prefer_encrypts_when_the_server_offers_tls() {
    let db = TestDb::new().await;
    // No sslmode in the URL: prefer.
    let url = Secret::new(db.url.clone());
    let wh = warehouse(&url).await;
    assert!(encrypted(wh.pool()).await.ssl);
    let state = StateStore::connect(&url, "capi_sync").await.unwrap();
    assert!(encrypted(state.pool()).await.ssl);
}

#[tokio::test]
async fn verify_full_with_the_servers_certificate_connects_to_the_name_it_bears() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let root = server_certificate(&db, dir.path()).await;
    let url = url_with(
        &db,
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", root.display()),
    );
    let wh = warehouse(&url).await;
    assert!(encrypted(wh.pool()).await.ssl);
    let state = StateStore::connect(&url, "capi_sync").await.unwrap();
    assert!(encrypted(state.pool()).await.ssl);
    let lock = state
        .try_lock_model("leads")
        .await
        .unwrap()
        .expect("lock free");
    assert!(lock_session_ssl(&db).await);
    lock.release().await;
}

#[tokio::test]
async fn verify_full_refuses_a_host_name_the_certificate_does_not_bear_in_one_line() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let root = server_certificate(&db, dir.path()).await;
    let url = url_with(
        &db,
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={}", root.display()),
    );
    let err = connect_error(Warehouse::connect(&url, Duration::from_secs(20), 2).await);
    assert!(
        err.contains("certificate verify failed for host 127.0.0.1")
            && err.contains("not issued for that name"),
        "{err}"
    );

    // Through the wiring, as every command prints it: the cause once, on one line.
    let mut config = config(&db, "http://127.0.0.1:9", "");
    config.warehouse.url = url;
    let line = capi_sync::error_line::one_line(
        &capi_sync::app::connect_warehouse(&config)
            .await
            .expect_err("refused"),
    );
    assert_eq!(
        line.matches("certificate verify failed").count(),
        1,
        "{line}"
    );
    assert!(!line.contains('\n'), "{line}");
    assert!(
        line.starts_with(&format!(
            "while connecting to the warehouse at 127.0.0.1:5432/{}",
            db.name
        )),
        "{line}"
    );
}

#[tokio::test]
async fn verify_ca_with_a_ca_that_did_not_sign_the_server_certificate_fails_in_one_line() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let (ca_pem, _) = self_signed("capi-sync test CA", true);
    let wrong = dir.path().join("wrong-ca.pem");
    std::fs::write(&wrong, ca_pem).unwrap();
    let url = url_with(
        &db,
        "localhost",
        &format!("sslmode=verify-ca&sslrootcert={}", wrong.display()),
    );
    let err = connect_error(Warehouse::connect(&url, Duration::from_secs(20), 2).await);
    assert!(
        err.contains("certificate verify failed for host localhost")
            && err.contains("not signed by the CA certificates of sslrootcert")
            && err.contains(&wrong.display().to_string()),
        "{err}"
    );
    assert_eq!(err.matches("certificate verify failed").count(), 1, "{err}");

    // The state database says the same.
    let err = StateStore::connect(&url, "capi_sync")
        .await
        .expect_err("refused")
        .to_string();
    assert!(
        err.starts_with("state database: certificate verify failed for host localhost"),
        "{err}"
    );
}

#[tokio::test]
async fn sslmode_require_with_a_root_certificate_verifies_the_ca_like_libpq() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let (ca_pem, _) = self_signed("capi-sync test CA", true);
    let wrong = dir.path().join("wrong-ca.pem");
    std::fs::write(&wrong, ca_pem).unwrap();
    let url = url_with(
        &db,
        "127.0.0.1",
        &format!("sslmode=require&sslrootcert={}", wrong.display()),
    );
    let err = connect_error(Warehouse::connect(&url, Duration::from_secs(20), 2).await);
    assert!(
        err.contains("certificate verify failed for host 127.0.0.1"),
        "{err}"
    );

    // The right CA passes.
    let root = server_certificate(&db, dir.path()).await;
    let url = url_with(
        &db,
        "localhost",
        &format!("sslmode=require&sslrootcert={}", root.display()),
    );
    assert!(encrypted(warehouse(&url).await.pool()).await.ssl);
}

#[tokio::test]
async fn a_missing_root_certificate_file_is_named_with_its_parameter_and_path() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-ca.pem");
    let url = url_with(
        &db,
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", missing.display()),
    );
    let err = connect_error(Warehouse::connect(&url, Duration::from_secs(20), 2).await);
    assert_eq!(
        err,
        format!(
            "warehouse: sslrootcert: cannot read {}: No such file or directory (os error 2)",
            missing.display()
        )
    );
}

#[tokio::test]
async fn a_client_certificate_and_key_are_loaded_and_presented() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let (cert_pem, key_pem) = self_signed("capi_sync_client", false);
    let cert = dir.path().join("client.crt");
    let key = dir.path().join("client.key");
    std::fs::write(&cert, cert_pem).unwrap();
    std::fs::write(&key, key_pem).unwrap();
    let query = format!(
        "sslmode=require&sslcert={}&sslkey={}",
        cert.display(),
        key.display()
    );
    let url = url_with(&db, "127.0.0.1", &query);
    let wh = warehouse(&url).await;
    assert!(encrypted(wh.pool()).await.ssl);

    // A missing key file is named as such.
    let missing = dir.path().join("gone.key");
    let url = url_with(
        &db,
        "127.0.0.1",
        &format!(
            "sslmode=require&sslcert={}&sslkey={}",
            cert.display(),
            missing.display()
        ),
    );
    let err = connect_error(Warehouse::connect(&url, Duration::from_secs(20), 2).await);
    assert!(
        err.starts_with(&format!(
            "warehouse: sslkey: cannot read {}:",
            missing.display()
        )),
        "{err}"
    );

    // A key file that holds no key too (the certificate given twice).
    let url = url_with(
        &db,
        "127.0.0.1",
        &format!(
            "sslmode=require&sslcert={}&sslkey={}",
            cert.display(),
            cert.display()
        ),
    );
    let err = connect_error(Warehouse::connect(&url, Duration::from_secs(20), 2).await);
    assert!(
        err.contains("sslkey:") && err.contains("holds no PEM private key"),
        "{err}"
    );
}

#[tokio::test]
async fn a_server_that_refuses_tls_under_sslmode_require_is_said_so_once() {
    // A stand-in server that answers every SSLRequest with 'N' (no TLS here), as Postgres
    // does with ssl = off.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut request = [0u8; 8];
            if socket.read_exact(&mut request).await.is_ok() {
                let _ = socket.write_all(b"N").await;
            }
        }
    });
    let url = Secret::new(format!(
        "postgres://someone:pw-9f8e7d@127.0.0.1:{port}/wh?sslmode=require"
    ));
    let err = connect_error(Warehouse::connect(&url, Duration::from_secs(20), 2).await);
    assert_eq!(
        err,
        format!(
            "warehouse: the server at 127.0.0.1:{port}/wh does not accept TLS, and sslmode=require requires it; \
             set sslmode=disable or prefer, or turn ssl on in the server"
        )
    );
}

#[tokio::test]
async fn state_sessions_bound_statements_lock_waits_idle_transactions_and_keep_alive() {
    let db = TestDb::new().await;
    let url = Secret::new(db.url.clone());
    let limits = StateLimits {
        statement_timeout: Duration::from_secs(42),
        ..Default::default()
    };
    let state = StateStore::connect_with_limits(&url, "capi_sync", &limits)
        .await
        .unwrap();
    let show = |name: &'static str| {
        let pool = state.pool().clone();
        async move {
            sqlx::query_scalar::<_, String>(&format!("SHOW {name}"))
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(show("statement_timeout").await, "42s");
    assert_eq!(show("lock_timeout").await, "10s");
    assert_eq!(show("idle_in_transaction_session_timeout").await, "5min");
    assert_eq!(show("tcp_keepalives_idle").await, "60");
    assert_eq!(show("tcp_keepalives_interval").await, "10");
    assert_eq!(show("tcp_keepalives_count").await, "6");
    assert_eq!(show("search_path").await, "capi_sync");

    // A statement past the limit is cancelled by the server.
    let short = StateLimits {
        statement_timeout: Duration::from_millis(200),
        ..Default::default()
    };
    let state = StateStore::connect_with_limits(&url, "capi_sync", &short)
        .await
        .unwrap();
    let err = sqlx::query("SELECT pg_sleep(30)")
        .execute(state.pool())
        .await
        .expect_err("cancelled by statement_timeout");
    assert_eq!(
        err.as_database_error().and_then(|d| d.code()).as_deref(),
        Some("57014"),
        "{err}"
    );

    // The warehouse's sessions keep alive too.
    let wh = warehouse(&url).await;
    let idle: String = sqlx::query_scalar("SHOW tcp_keepalives_idle")
        .fetch_one(wh.pool())
        .await
        .unwrap();
    assert_eq!(idle, "60");
}

#[tokio::test]
async fn state_statement_timeout_is_read_from_the_config() {
    let db = TestDb::new().await;
    let text = config_text(
        &db,
        "http://127.0.0.1:9",
        "[state]\nstatement_timeout = \"45s\"",
        "",
    );
    let config = capi_sync::config::Config::from_toml_str(&text, Path::new(".")).unwrap();
    let state = capi_sync::app::connect_state(&config).await.unwrap();
    let timeout: String = sqlx::query_scalar("SHOW statement_timeout")
        .fetch_one(state.pool())
        .await
        .unwrap();
    assert_eq!(timeout, "45s");
}

/// `capi-sync check --offline` on a config whose both URLs carry these parameters.
async fn run_check(db: &TestDb, url: &Secret) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tls-check.toml");
    let text = config_text(db, "http://127.0.0.1:9", "", "").replace(
        &format!("url = \"{}\"", db.url),
        &format!("url = \"{}\"", url.expose()),
    );
    std::fs::write(&path, text).unwrap();
    let mut cmd = binary();
    cmd.arg("--config").arg(&path).args(["check", "--offline"]);
    for (k, _) in std::env::vars() {
        if k.starts_with("PGSSL") {
            cmd.env_remove(k);
        }
    }
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("check ends")
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test]
async fn check_reports_whether_each_connection_is_encrypted() {
    let db = TestDb::new().await;
    let url = Secret::new(format!(
        "postgres://postgres:pw-5e4d3c@127.0.0.1:5432/{}?sslmode=require&password=pw-5e4d3c",
        db.name
    ));
    let (code, out) = run_check(&db, &url).await;
    assert_eq!(code, 0, "{out}");
    let target = format!("127.0.0.1:5432/{}", db.name);
    for scope in ["warehouse", "state"] {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("{scope}: ok — {target}: encrypted (TLS")))
            .unwrap_or_else(|| panic!("no encryption line for {scope}:\n{out}"));
        assert!(line.contains("sslmode=require"), "{line}");
    }
    assert!(
        !out.contains("pw-5e4d3c") && !out.contains("postgres:"),
        "{out}"
    );

    let url = Secret::new(format!("{}?sslmode=disable", db.url));
    let (code, out) = run_check(&db, &url).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "warehouse: ok — {target}: not encrypted (sslmode=disable; a loopback connection)"
        )),
        "{out}"
    );
}

#[tokio::test]
async fn check_names_a_certificate_failure_once_and_never_the_password() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let root = server_certificate(&db, dir.path()).await;
    let url = Secret::new(format!(
        "postgres://postgres:pw-1a2b3c@127.0.0.1:5432/{}?sslmode=verify-full&sslrootcert={}",
        db.name,
        root.display()
    ));
    let (code, out) = run_check(&db, &url).await;
    assert_eq!(code, 3, "{out}");
    for scope in ["warehouse", "state"] {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("{scope}: error — ")))
            .unwrap_or_else(|| panic!("no error line for {scope}:\n{out}"));
        assert_eq!(
            line.matches("certificate verify failed for host 127.0.0.1")
                .count(),
            1,
            "{line}"
        );
    }
    assert!(
        !out.contains("pw-1a2b3c") && !out.contains("postgres:"),
        "{out}"
    );
}

#[tokio::test]
async fn migrations_wait_for_locks_beyond_the_state_sessions_lock_timeout() {
    let db = TestDb::new().await;
    let url = Secret::new(db.url.clone());
    let impatient = StateLimits {
        lock_timeout: Duration::from_millis(100),
        ..Default::default()
    };
    let state = StateStore::connect_with_limits(&url, "capi_sync", &impatient)
        .await
        .unwrap();
    state.migrate().await.unwrap();

    // Another session holds the migration history table; the next migration must wait
    // for it rather than fail at the sessions' 100 ms lock timeout.
    let mut holder = db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE capi_sync._sqlx_migrations IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let migrating = tokio::spawn({
        let state = state.clone();
        async move { state.migrate().await }
    });
    // Released only once the migration is seen waiting, well past 100 ms.
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let waiting: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM pg_locks
                                WHERE relation = 'capi_sync._sqlx_migrations'::regclass AND NOT granted)",
            )
            .fetch_one(&db.pool)
            .await
            .unwrap();
            if waiting {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the migration waits on the lock");
    tokio::time::sleep(Duration::from_millis(300)).await;
    holder.commit().await.unwrap();
    migrating
        .await
        .unwrap()
        .expect("the migration waited and ran");

    // The pool's own sessions keep the short lock timeout.
    let lock_timeout: String = sqlx::query_scalar("SHOW lock_timeout")
        .fetch_one(state.pool())
        .await
        .unwrap();
    assert_eq!(lock_timeout, "100ms");
}
