//! A model's cron schedule: 5-field crontab, 6 fields with seconds first, or `@hourly`-style
//! shorthands, validated once when the config loads.

use std::fmt;
use std::str::FromStr;

/// A validated cron schedule.
#[derive(Clone)]
pub struct Schedule {
    pub expression: String,
    pub cron: cron::Schedule,
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Schedule({})", self.expression)
    }
}

impl Schedule {
    /// Accepts 5-field crontab (minute precision), 6 fields with seconds first, or the
    /// `@hourly`-style shorthands.
    pub fn parse(expr: &str) -> Result<Schedule, String> {
        let trimmed = expr.trim();
        let fields = trimmed.split_whitespace().count();
        let full = if trimmed.starts_with('@') {
            trimmed.to_string()
        } else {
            match fields {
                5 => format!("0 {trimmed}"),
                6 => trimmed.to_string(),
                n => {
                    return Err(format!(
                        "`{trimmed}` has {n} fields; use 5 (minute hour day month weekday) or 6 (with seconds first)"
                    ))
                }
            }
        };
        let cron = cron::Schedule::from_str(&full)
            .map_err(|e| format!("`{trimmed}` is not a valid cron expression: {e}"))?;
        Ok(Schedule {
            expression: trimmed.to_string(),
            cron,
        })
    }

    pub fn next_after(
        &self,
        t: chrono::DateTime<chrono::Utc>,
    ) -> Option<chrono::DateTime<chrono::Utc>> {
        self.cron.after(&t).next()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_and_six_field_crons_parse() {
        let five = Schedule::parse("*/15 * * * *").unwrap();
        let six = Schedule::parse("30 */15 * * * *").unwrap();
        let t = chrono::DateTime::parse_from_rfc3339("2026-01-01T10:07:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(
            five.next_after(t).unwrap().to_rfc3339(),
            "2026-01-01T10:15:00+00:00"
        );
        assert_eq!(
            six.next_after(t).unwrap().to_rfc3339(),
            "2026-01-01T10:15:30+00:00"
        );
    }

    #[test]
    fn bad_crons_are_rejected_with_the_expression() {
        let e = Schedule::parse("every hour").unwrap_err();
        assert!(e.contains("every hour"), "{e}");
        let e = Schedule::parse("61 * * * *").unwrap_err();
        assert!(e.contains("61 * * * *"), "{e}");
    }
}
