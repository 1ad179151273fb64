//! An error and its causes in one line, each cause said once.
//!
//! anyhow's `{:#}` prints every error of the chain, but our error enums and sqlx's already
//! include their source in their own message (`state database: {0}`), so a cause three
//! levels down was printed three times. Here a cause that the message before it already
//! holds is left out, and any Postgres URL is cut down to `host:port/db`.

/// `context: error: cause`, without repeats.
pub fn one_line(err: &anyhow::Error) -> String {
    of_chain(err.chain().map(|e| e.to_string()))
}

fn of_chain(messages: impl Iterator<Item = String>) -> String {
    let mut parts: Vec<String> = Vec::new();
    for message in messages {
        let message = message.trim().to_string();
        if message.is_empty() || parts.last().is_some_and(|last| last.contains(&message)) {
            continue;
        }
        parts.push(message);
    }
    crate::connection::scrub(&parts.join(": "), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_already_in_its_parent_message_is_said_once() {
        let line = of_chain(
            [
                "while connecting to the warehouse at h:5432/db",
                "warehouse: error with configuration: SQLx was built without TLS support",
                "error with configuration: SQLx was built without TLS support",
                "SQLx was built without TLS support",
            ]
            .into_iter()
            .map(String::from),
        );
        assert_eq!(
            line,
            "while connecting to the warehouse at h:5432/db: warehouse: error with configuration: SQLx was built without TLS support"
        );
        assert_eq!(line.matches("TLS support").count(), 1);
    }

    #[test]
    fn a_url_in_a_cause_is_cut_to_host_port_and_database() {
        let line = of_chain(
            ["failed", "bad postgres://u:pw@h:1/d?password=x"]
                .into_iter()
                .map(String::from),
        );
        assert_eq!(line, "failed: bad h:1/d");
    }
}
