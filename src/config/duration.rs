//! Human durations in config: `500ms`, `30s`, `15m`, `2h`, `14d`, or a plain number of seconds.

use std::time::Duration;

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty duration".into());
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{t}` is not a duration like 30s, 15m, 2h or 14d"))?;
    let secs = |m: u64| Duration::from_secs(n.saturating_mul(m));
    match unit.trim() {
        "" | "s" | "sec" | "secs" => Ok(secs(1)),
        "ms" => Ok(Duration::from_millis(n)),
        "m" | "min" | "mins" => Ok(secs(60)),
        "h" | "hour" | "hours" => Ok(secs(3600)),
        "d" | "day" | "days" => Ok(secs(86_400)),
        other => Err(format!(
            "`{t}`: unknown unit `{other}` (use ms, s, m, h or d)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_unit() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("45").unwrap(), Duration::from_secs(45));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(
            parse_duration("14d").unwrap(),
            Duration::from_secs(14 * 86_400)
        );
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_duration("").is_err());
        assert!(parse_duration("ten minutes").is_err());
        assert!(parse_duration("10w").is_err());
    }
}
