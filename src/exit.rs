//! The process's exit codes. Scripts and schedulers branch on them, so each keeps its number
//! for good; a new kind of ending gets a new number.

/// How a command ended, as the process's exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: the command did what it was asked.
    Ok = 0,
    /// 1: at least one model failed to sync (a delivery or warehouse failure), or `check
    /// --min-quality` found a match quality below the minimum.
    SyncFailed = 1,
    /// 2: the configuration is invalid (or `check` found an error in it or in a model), or a
    /// command was used wrongly ([`UsageError`]).
    BadConfig = 2,
    /// 3: anything else (cannot connect, or `check` could not reach something; an
    /// unexpected error).
    Unexpected = 3,
}

impl Exit {
    /// The number the process exits with.
    pub fn code(self) -> i32 {
        self as i32
    }
}

/// A command used wrongly (a value that does not fit, a missing `--yes`): exit code 2, like
/// a config error, with a message that says what to do instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Prints a command's error on one line to stderr and gives the code it exits with: a config
/// or usage error is 2, anything else 3.
pub fn report(error: &anyhow::Error) -> Exit {
    if let Some(ce) = error.downcast_ref::<crate::config::ConfigError>() {
        eprintln!("{ce}");
        return Exit::BadConfig;
    }
    if let Some(ue) = error.downcast_ref::<UsageError>() {
        eprintln!("capi-sync: {ue}");
        return Exit::BadConfig;
    }
    eprintln!("capi-sync: {}", crate::error_line::one_line(error));
    Exit::Unexpected
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_codes_keep_their_numbers() {
        assert_eq!(
            [
                Exit::Ok,
                Exit::SyncFailed,
                Exit::BadConfig,
                Exit::Unexpected
            ]
            .map(Exit::code),
            [0, 1, 2, 3]
        );
    }

    #[test]
    fn config_and_usage_errors_exit_2_and_others_3() {
        let config = crate::config::ConfigError {
            problems: vec!["a problem".into()],
        };
        assert_eq!(report(&config.into()), Exit::BadConfig);
        assert_eq!(
            report(&UsageError("name one model".into()).into()),
            Exit::BadConfig
        );
        assert_eq!(report(&anyhow::anyhow!("cannot connect")), Exit::Unexpected);
    }
}
