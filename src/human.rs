//! Numbers, durations and times as people read them in the commands' output and the
//! progress display: "3 120 rows", "3m 10s", "2026-03-01 12:00:02 UTC".

/// "1 row" / "3 120 rows".
pub fn rows(n: i64) -> String {
    if n == 1 {
        "1 row".into()
    } else {
        format!("{} rows", group_digits(n))
    }
}

/// "1 row is" / "3 120 rows are".
pub fn rows_are(n: i64) -> String {
    if n == 1 {
        "1 row is".into()
    } else {
        format!("{} rows are", group_digits(n))
    }
}

/// Thousands separated by a space: 3120 → "3 120".
pub fn group_digits(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if n < 0 {
        out.push('-');
    }
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(ch);
    }
    out
}

/// A short human duration: "45s", "3m 10s", "2h 5m", "3d 4h".
pub fn human_duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// A duration setting as it was likely written in the config: `24h`, `2d`, `90m`, `45s`.
pub fn setting_duration(secs: u64) -> String {
    match secs {
        s if s > 86_400 && s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s >= 3600 && s % 3600 == 0 => format!("{}h", s / 3600),
        s if s >= 60 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// `2026-03-01 12:00:02 UTC`.
pub fn utc(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_are_grouped_by_three_with_spaces() {
        assert_eq!(group_digits(0), "0");
        assert_eq!(group_digits(999), "999");
        assert_eq!(group_digits(3120), "3 120");
        assert_eq!(group_digits(1_234_567), "1 234 567");
        assert_eq!(rows(1), "1 row");
        assert_eq!(rows(3120), "3 120 rows");
    }

    #[test]
    fn duration_settings_read_as_they_are_written() {
        assert_eq!(setting_duration(86_400), "24h");
        assert_eq!(setting_duration(3 * 86_400), "3d");
        assert_eq!(setting_duration(90 * 60), "90m");
        assert_eq!(setting_duration(45), "45s");
    }

    #[test]
    fn durations_read_like_a_person_would_say_them() {
        assert_eq!(human_duration(42.4), "42s");
        assert_eq!(human_duration(190.0), "3m 10s");
        assert_eq!(human_duration(7500.0), "2h 5m");
        assert_eq!(human_duration(3.0 * 86_400.0 + 4.0 * 3600.0), "3d 4h");
    }
}
