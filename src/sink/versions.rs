//! The Graph API versions capi-sync knows, with the dates Meta ends them, and what `check`
//! says of `meta.api_version` on a given day (a pure function of the version and the date).
//!
//! Two end dates per version, because Meta runs two cycles:
//! - Graph API: a version lasts two years after the next one's release
//!   (https://developers.facebook.com/docs/apps/versions). The Conversions API's `/events`
//!   follows this cycle: "the Conversions API follows the Graph API cycle", an exception for
//!   the Conversions API only
//!   (https://developers.facebook.com/documentation/ads-commerce/conversions-api/using-the-api).
//!   Past it, Meta refuses the version, so a run could not send.
//! - Marketing API: a version is kept at least 90 days after the next release
//!   (https://developers.facebook.com/documentation/ads-commerce/marketing-api/overview/versioning).
//!   It may govern the Marketing API's own endpoints, such as the Dataset Quality API, so its
//!   end is worth a warning too.
//!
//! Sources of the table:
//! - Graph API end dates: https://developers.facebook.com/docs/graph-api/changelog/versions
//!   (the localized copies, `?locale=de_DE` and others, which list v26.0 and give the dates;
//!   the English copy still says TBD for v21.0 to v25.0).
//! - Marketing API end dates: v17.0 to v21.0 from
//!   https://developers.facebook.com/docs/marketing-api/marketing-api-changelog/versions ,
//!   v22.0 and later from
//!   https://developers.facebook.com/documentation/ads-commerce/marketing-api/marketing-api-changelog/versions.md
//!   (for v24.0 the newest copy's 2026-11-10, over an older copy's 2026-10-06).
//! - v27.0's release:
//!   https://developers.facebook.com/blog/post/2026/11/04/introducing-graph-api-v27-and-marketing-api-v27/
//!
//! Dates not announced are `None`. Any version older than v17.0 has ended on both cycles.

use chrono::NaiveDate;

/// A calendar date in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Day(pub i32, pub u32, pub u32);

impl Day {
    pub fn date(self) -> NaiveDate {
        NaiveDate::from_ymd_opt(self.0, self.1, self.2).expect("a valid date in the table")
    }
}

/// One Graph API version and when Meta ends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GraphVersion {
    pub version: &'static str,
    pub released: Day,
    /// End of the Graph API cycle, which the Conversions API follows; None: not announced.
    pub graph_end: Option<Day>,
    /// End of the Marketing API cycle; None: not announced.
    pub marketing_end: Option<Day>,
}

const fn v(
    version: &'static str,
    released: Day,
    graph_end: Option<Day>,
    marketing_end: Option<Day>,
) -> GraphVersion {
    GraphVersion {
        version,
        released,
        graph_end,
        marketing_end,
    }
}

/// v17.0 to the newest version Meta documents, oldest first.
pub const VERSIONS: [GraphVersion; 11] = [
    v(
        "v17.0",
        Day(2023, 5, 23),
        Some(Day(2025, 9, 12)),
        Some(Day(2024, 5, 14)),
    ),
    v(
        "v18.0",
        Day(2023, 9, 12),
        Some(Day(2026, 1, 26)),
        Some(Day(2024, 8, 13)),
    ),
    v(
        "v19.0",
        Day(2024, 1, 23),
        Some(Day(2026, 5, 21)),
        Some(Day(2025, 2, 4)),
    ),
    v(
        "v20.0",
        Day(2024, 5, 21),
        Some(Day(2026, 9, 24)),
        Some(Day(2025, 5, 6)),
    ),
    v(
        "v21.0",
        Day(2024, 10, 2),
        Some(Day(2027, 1, 21)),
        Some(Day(2025, 9, 9)),
    ),
    v(
        "v22.0",
        Day(2025, 1, 21),
        Some(Day(2027, 5, 20)),
        Some(Day(2026, 2, 19)),
    ),
    v(
        "v23.0",
        Day(2025, 5, 29),
        Some(Day(2027, 10, 8)),
        Some(Day(2026, 6, 9)),
    ),
    v(
        "v24.0",
        Day(2025, 10, 8),
        Some(Day(2028, 2, 18)),
        Some(Day(2026, 11, 10)),
    ),
    v(
        "v25.0",
        Day(2026, 2, 18),
        Some(Day(2028, 7, 29)),
        Some(Day(2027, 2, 23)),
    ),
    v("v26.0", Day(2026, 7, 29), None, None),
    v("v27.0", Day(2026, 11, 4), None, None),
];

/// The newest version in the table: the one to move to.
pub const NEWEST: &str = VERSIONS[VERSIONS.len() - 1].version;

/// An end of life this close is warned of: Meta's own notice before it retires a Marketing
/// API version is at least 90 days (versioning page above).
pub const WARN_DAYS_BEFORE_END: i64 = 90;

/// The table's row for `version`.
pub fn lookup(version: &str) -> Option<&'static GraphVersion> {
    VERSIONS.iter().find(|g| g.version == version)
}

/// `vNN.N` as (major, minor).
fn parse(version: &str) -> Option<(u32, u32)> {
    let (major, minor) = version.strip_prefix('v')?.split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// How serious a finding about the version is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Live, or unknown to us (newer than the table): nothing to do.
    Ok,
    Warning,
    /// Ended on the Graph API cycle: Meta refuses it, no run can send.
    Error,
}

/// One thing `check` says about `meta.api_version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionFinding {
    pub severity: Severity,
    pub message: String,
}

fn finding(severity: Severity, message: String) -> VersionFinding {
    VersionFinding { severity, message }
}

/// What `check` says of `version` on `today`: an error when its Graph API end of life has
/// passed (the Conversions API follows that cycle), a warning when it is within
/// [`WARN_DAYS_BEFORE_END`] days, and a warning when the Marketing API's end is that close or
/// past. A version newer than the table is not an error: its dates are unknown to us.
pub fn assess(version: &str, today: NaiveDate) -> Vec<VersionFinding> {
    let oldest = &VERSIONS[0];
    let move_to = format!("set meta.api_version to {NEWEST}, the newest version Meta documents");
    let Some(row) = lookup(version) else {
        let ended = parse(version).is_some_and(|(major, _)| {
            parse(oldest.version).is_some_and(|(first, _)| major < first)
        });
        return vec![if ended {
            finding(
                Severity::Error,
                format!(
                    "{version} is older than {}, whose Graph API end of life was {}: Meta refuses it (error 2635); {move_to}",
                    oldest.version,
                    oldest.graph_end.map(|d| d.date().to_string()).unwrap_or_default()
                ),
            )
        } else {
            finding(
                Severity::Ok,
                format!(
                    "{version} is unknown to capi-sync (it knows {} to {NEWEST}), so its end of life is not known here; see https://developers.facebook.com/docs/graph-api/changelog/versions",
                    oldest.version
                ),
            )
        }];
    };
    let mut out = Vec::new();
    let days_to = |d: Day| (d.date() - today).num_days();
    match row.graph_end {
        Some(end) if days_to(end) <= 0 => {
            out.push(finding(
                Severity::Error,
                format!(
                    "{version} reached its Graph API end of life on {}; the Conversions API follows the Graph API cycle, so Meta refuses it (error 2635) and no run can send; {move_to}",
                    end.date()
                ),
            ));
            // The Marketing API's end is beside the point then.
            return out;
        }
        Some(end) if days_to(end) <= WARN_DAYS_BEFORE_END => out.push(finding(
            Severity::Warning,
            format!(
                "{version} reaches its Graph API end of life on {}, in {} days; runs fail from then on (error 2635): {move_to}",
                end.date(),
                days_to(end)
            ),
        )),
        Some(end) => out.push(finding(
            Severity::Ok,
            format!(
                "{version} is live: its Graph API end of life, which the Conversions API follows, is {}",
                end.date()
            ),
        )),
        None => out.push(finding(
            Severity::Ok,
            format!("{version} is live: Meta has not announced its Graph API end of life"),
        )),
    }
    if let Some(end) = row.marketing_end {
        let days = days_to(end);
        let when = if days <= 0 {
            format!("was {}", end.date())
        } else {
            format!("is {}, in {days} days", end.date())
        };
        if days <= WARN_DAYS_BEFORE_END {
            out.push(finding(
                Severity::Warning,
                format!(
                    "{version}'s Marketing API end of life {when}: /events keeps the Graph API cycle, but Marketing API endpoints (such as the Dataset Quality API) may refuse it; {move_to}"
                ),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    fn worst(version: &str, today: NaiveDate) -> Severity {
        assess(version, today)
            .iter()
            .map(|f| f.severity)
            .max()
            .unwrap()
    }

    #[test]
    fn the_table_runs_from_v17_to_v27_in_release_order_with_the_documented_dates() {
        let names: Vec<&str> = VERSIONS.iter().map(|g| g.version).collect();
        assert_eq!(names.first(), Some(&"v17.0"));
        assert_eq!(NEWEST, "v27.0");
        assert_eq!(names.len(), 11);
        for pair in VERSIONS.windows(2) {
            assert!(pair[0].released.date() < pair[1].released.date());
            assert!(parse(pair[0].version).unwrap() < parse(pair[1].version).unwrap());
        }
        let v24 = lookup("v24.0").unwrap();
        assert_eq!(v24.graph_end, Some(Day(2028, 2, 18)));
        assert_eq!(v24.marketing_end, Some(Day(2026, 11, 10)));
        let v27 = lookup("v27.0").unwrap();
        assert_eq!(v27.released, Day(2026, 11, 4));
        assert_eq!((v27.graph_end, v27.marketing_end), (None, None));
    }

    #[test]
    fn a_version_past_its_graph_end_is_an_error_naming_the_newest() {
        let today = day(2026, 12, 6);
        for ended in ["v17.0", "v18.0", "v19.0", "v20.0"] {
            let f = assess(ended, today);
            assert_eq!(f.len(), 1, "{f:?}");
            assert_eq!(f[0].severity, Severity::Error);
            assert!(f[0].message.contains("v27.0"), "{}", f[0].message);
            assert!(f[0].message.contains("2635"), "{}", f[0].message);
        }
        // The day itself counts as ended.
        assert_eq!(worst("v20.0", day(2026, 9, 24)), Severity::Error);
        assert_eq!(worst("v20.0", day(2026, 9, 23)), Severity::Warning);
    }

    #[test]
    fn a_version_older_than_the_table_has_ended() {
        let f = assess("v16.0", day(2026, 12, 6));
        assert_eq!(f[0].severity, Severity::Error);
        assert!(
            f[0].message.contains("older than v17.0"),
            "{}",
            f[0].message
        );
    }

    #[test]
    fn a_graph_end_within_90_days_warns_with_the_days_left() {
        let f = assess("v21.0", day(2026, 12, 6));
        assert_eq!(f[0].severity, Severity::Warning);
        assert!(
            f[0].message.contains("2027-01-21, in 46 days"),
            "{}",
            f[0].message
        );
        // 91 days before: no warning of the Graph end.
        assert_eq!(assess("v21.0", day(2026, 10, 22))[0].severity, Severity::Ok);
    }

    #[test]
    fn a_near_or_past_marketing_end_warns_without_failing() {
        // v24.0: Graph end 2028-02-18, Marketing end 2026-11-10 (past on 2026-12-06).
        let f = assess("v24.0", day(2026, 12, 6));
        assert_eq!(f[0].severity, Severity::Ok);
        assert_eq!(f[1].severity, Severity::Warning);
        assert!(f[1].message.contains("was 2026-11-10"), "{}", f[1].message);
        // v25.0: Marketing end 2027-02-23, 79 days after 2026-12-06.
        let f = assess("v25.0", day(2026, 12, 6));
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(f[1].message.contains("in 79 days"), "{}", f[1].message);
        // Far from both ends: one OK line.
        let f = assess("v25.0", day(2026, 3, 1));
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].severity, Severity::Ok);
    }

    #[test]
    fn the_newest_versions_have_no_announced_end() {
        for live in ["v26.0", "v27.0"] {
            let f = assess(live, day(2026, 12, 6));
            assert_eq!(f.len(), 1);
            assert_eq!(f[0].severity, Severity::Ok);
            assert!(f[0].message.contains("not announced"), "{}", f[0].message);
        }
    }

    #[test]
    fn a_version_newer_than_the_table_is_a_note_not_an_error() {
        let f = assess("v28.0", day(2026, 12, 6));
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].severity, Severity::Ok);
        assert!(
            f[0].message.contains("unknown to capi-sync"),
            "{}",
            f[0].message
        );
    }
}
