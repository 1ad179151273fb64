//! `user_data`: each key's form (hashed, plain, cookie, IP, …), and whether the identifiers
//! together are enough to match a person (Meta's too-broad sets).

use super::{invalid_user_data, shown};
use crate::error::*;
use crate::json::{Jv, Object};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Must be SHA-256: lowercase 64-hex, optionally `.` + 8-char base64url appendix. String or array.
    Hashed,
    /// Raw or hashed: non-empty string or array of non-empty strings.
    ExternalId,
    Ip,
    Fbc,
    Fbp,
    LeadId,
    FbLoginId,
    /// A plain non-empty string (never hashed, no arrays).
    Text,
}

fn kind_of(key: &str) -> Option<Kind> {
    Some(match key {
        "em" | "ph" | "fn" | "ln" | "ct" | "st" | "zp" | "country" | "db" | "ge" => Kind::Hashed,
        // Legacy split keys that the SDKs still hash (whether Meta honours them is UNCONFIRMED).
        "f5first" | "f5last" | "fi" | "dobd" | "dobm" | "doby" => Kind::Hashed,
        "external_id" => Kind::ExternalId,
        "client_ip_address" => Kind::Ip,
        "fbc" => Kind::Fbc,
        "fbp" => Kind::Fbp,
        "lead_id" => Kind::LeadId,
        "fb_login_id" => Kind::FbLoginId,
        "client_user_agent"
        | "subscription_id"
        | "anon_id"
        | "madid"
        | "page_id"
        | "page_scoped_user_id"
        | "ctwa_clid"
        | "ig_account_id"
        | "ig_sid"
        | "whatsapp_business_account_id"
        | "instagram_business_account_id" => Kind::Text,
        _ => return None,
    })
}

// Bits for the keys that appear in the too-broad sets (§3.3).
const B_CT: u16 = 1;
const B_COUNTRY: u16 = 1 << 1;
const B_ST: u16 = 1 << 2;
const B_ZP: u16 = 1 << 3;
const B_GE: u16 = 1 << 4;
const B_UA: u16 = 1 << 5;
const B_DB: u16 = 1 << 6;
const B_FN: u16 = 1 << 7;
const B_LN: u16 = 1 << 8;
/// Any other identifier: never too broad.
const B_OTHER: u16 = 1 << 15;

const TOO_BROAD: [u16; 4] = [
    B_CT | B_COUNTRY | B_ST | B_ZP | B_GE | B_UA,
    B_DB | B_UA,
    B_FN | B_GE,
    B_LN | B_GE,
];

fn bit_of(key: &str) -> u16 {
    match key {
        "ct" => B_CT,
        "country" => B_COUNTRY,
        "st" => B_ST,
        "zp" => B_ZP,
        "ge" => B_GE,
        "client_user_agent" => B_UA,
        "db" => B_DB,
        "fn" => B_FN,
        "ln" => B_LN,
        _ => B_OTHER,
    }
}

pub(super) fn validate_user_data(i: usize, ud: &Object<'_>) -> Result<(), GraphError> {
    let mut present: u16 = 0;
    for (key, value) in ud.iter() {
        let Some(kind) = kind_of(key) else {
            return Err(invalid_user_data(
                i,
                shown(key),
                "is not a valid customer information parameter",
            ));
        };
        if value.is_null() {
            return Err(invalid_user_data(
                i,
                key,
                "must not be null (omit the key instead)",
            ));
        }
        if check_user_value(i, key, kind, value)? {
            present |= bit_of(key);
        }
    }
    if present == 0 {
        return Err(insufficient(i, "has no customer information parameters"));
    }
    if present & B_OTHER == 0 && TOO_BROAD.iter().any(|set| present & !set == 0) {
        return Err(insufficient(
            i,
            "only has a combination of customer information parameters too broad to match",
        ));
    }
    Ok(())
}

fn insufficient(i: usize, what: &str) -> GraphError {
    GraphError::event(
        SUB_INSUFFICIENT_CUSTOMER_INFO,
        "Insufficient customer information",
        format!(
            "data[{i}].user_data {what}; add a strong identifier such as em, ph, external_id, fbc, fbp, client_ip_address, lead_id or fn+ln"
        ),
    )
}

/// Validates one user_data value; returns whether it counts as a present identifier
/// (an empty array does not).
fn check_user_value(i: usize, key: &str, kind: Kind, value: &Jv<'_>) -> Result<bool, GraphError> {
    match kind {
        Kind::Hashed => {
            let check = |s: &str, at: Option<usize>| -> Result<(), GraphError> {
                if is_hashed(s) {
                    return Ok(());
                }
                let field = match at {
                    Some(k) => format!("{key}[{k}]"),
                    None => key.to_owned(),
                };
                Err(GraphError::event(
                    SUB_NOT_HASHED,
                    "Unhashed customer information",
                    format!(
                        "data[{i}].user_data.{field} must be a lowercase hex SHA-256 digest of the normalized value \
                         (optionally followed by a Parameter Builder appendix); this value is not hashed"
                    ),
                ))
            };
            match value {
                Jv::Str(s) => check(s, None).map(|_| true),
                Jv::Arr(items) => {
                    for (k, item) in items.iter().enumerate() {
                        match item {
                            Jv::Str(s) => check(s, Some(k))?,
                            _ => {
                                return Err(invalid_user_data(
                                    i,
                                    &format!("{key}[{k}]"),
                                    "must be a string",
                                ))
                            }
                        }
                    }
                    Ok(!items.is_empty())
                }
                _ => Err(invalid_user_data(
                    i,
                    key,
                    "must be a string or an array of strings",
                )),
            }
        }
        Kind::ExternalId => match value {
            Jv::Str(s) if !s.is_empty() => Ok(true),
            Jv::Arr(items) => {
                if let Some(k) = items
                    .iter()
                    .position(|v| !matches!(v, Jv::Str(s) if !s.is_empty()))
                {
                    return Err(invalid_user_data(
                        i,
                        &format!("{key}[{k}]"),
                        "must be a non-empty string",
                    ));
                }
                Ok(!items.is_empty())
            }
            _ => Err(invalid_user_data(
                i,
                key,
                "must be a non-empty string or an array of strings",
            )),
        },
        Kind::Ip => match value {
            Jv::Str(s) if is_ip(s) => Ok(true),
            _ => Err(invalid_user_data(
                i,
                key,
                "must be a valid IPv4 or IPv6 address (unhashed)",
            )),
        },
        Kind::Fbc | Kind::Fbp => match value {
            Jv::Str(s) if is_fb_cookie(s) => Ok(true),
            _ => Err(invalid_user_data(
                i,
                key,
                "must have the format fb.<subdomain index>.<creation time ms>.<value>",
            )),
        },
        Kind::LeadId => {
            // A JSON integer of 15-17 digits. serde_json parses integer literals into u64 exactly
            // (17 digits < 2^64), so no float rounding is involved. Digit strings are rejected:
            // whether Meta accepts them is UNCONFIRMED, and capi-sync sends integers.
            let ok = value
                .as_u64()
                .is_some_and(|n| (100_000_000_000_000..100_000_000_000_000_000).contains(&n));
            if ok {
                Ok(true)
            } else {
                Err(GraphError::event(
                    SUB_INVALID_LEAD_ID,
                    "Invalid lead ID",
                    format!(
                        "data[{i}].user_data.lead_id must be a JSON integer of 15 to 17 digits"
                    ),
                ))
            }
        }
        Kind::FbLoginId => match value.as_u64() {
            Some(n) if n > 0 => Ok(true),
            _ => Err(invalid_user_data(i, key, "must be a positive JSON integer")),
        },
        Kind::Text => match value {
            Jv::Str(s) if !s.trim().is_empty() => Ok(true),
            _ => Err(invalid_user_data(i, key, "must be a non-empty string")),
        },
    }
}

/// `LOWER_HEX[b]` is true for `0-9` and `a-f`.
static LOWER_HEX: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = b'0';
    while c <= b'9' {
        t[c as usize] = true;
        c += 1;
    }
    let mut c = b'a';
    while c <= b'f' {
        t[c as usize] = true;
        c += 1;
    }
    t
};

fn is_lower_hex64(b: &[u8]) -> bool {
    b.len() == 64 && b.iter().fold(true, |ok, &c| ok & LOWER_HEX[c as usize])
}

fn is_base64url(b: &[u8]) -> bool {
    b.iter()
        .all(|&c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
}

/// Lowercase 64-hex, optionally followed by `.` and an 8-character base64url appendix.
pub fn is_hashed(s: &str) -> bool {
    let b = s.as_bytes();
    match b.len() {
        64 => is_lower_hex64(b),
        73 => is_lower_hex64(&b[..64]) && b[64] == b'.' && is_base64url(&b[65..]),
        _ => false,
    }
}

/// A valid IP address, optionally followed by a Parameter Builder appendix.
pub(super) fn is_ip(s: &str) -> bool {
    if s.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    match s.rsplit_once('.') {
        Some((ip, appendix)) if appendix.len() == 8 && is_base64url(appendix.as_bytes()) => {
            ip.parse::<std::net::IpAddr>().is_ok()
        }
        _ => false,
    }
}

/// `fb.<digits>.<digits>.<payload>` (the payload may carry a `.appendix`).
pub(super) fn is_fb_cookie(s: &str) -> bool {
    let mut parts = s.splitn(4, '.');
    let digits =
        |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    parts.next() == Some("fb")
        && digits(parts.next())
        && digits(parts.next())
        && parts.next().is_some_and(|p| {
            !p.is_empty()
                && !p
                    .bytes()
                    .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        })
}
