//! TEMPORARY STUB — replaced by the full normalizer.
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PiiField { Em, Ph, Fn, Ln, Ct, St, Zp, Country, Db, Ge, ExternalId }
impl PiiField {
    pub const ALL: [PiiField; 11] = [PiiField::Em, PiiField::Ph, PiiField::Fn, PiiField::Ln, PiiField::Ct, PiiField::St, PiiField::Zp, PiiField::Country, PiiField::Db, PiiField::Ge, PiiField::ExternalId];
    pub fn key(self) -> &'static str {
        match self { PiiField::Em => "em", PiiField::Ph => "ph", PiiField::Fn => "fn", PiiField::Ln => "ln", PiiField::Ct => "ct", PiiField::St => "st", PiiField::Zp => "zp", PiiField::Country => "country", PiiField::Db => "db", PiiField::Ge => "ge", PiiField::ExternalId => "external_id" }
    }
    pub fn from_key(key: &str) -> Option<Self> { Self::ALL.into_iter().find(|f| f.key() == key) }
}
#[derive(Debug, Clone, Copy)]
pub enum PiiInput<'a> { Text(&'a str), Int(i64), Date(chrono::NaiveDate) }
#[derive(Debug, Clone, Copy, Default)]
pub struct NormalizeContext<'a> { pub default_country: Option<&'a str>, pub row_country: Option<&'a str>, pub external_id_raw: bool }
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Normalized { Plain(String), AlreadyHashed(String) }
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason { Empty, InvalidEmail }
impl DropReason { pub fn code(self) -> &'static str { match self { DropReason::Empty => "empty", DropReason::InvalidEmail => "invalid_email" } } }
impl std::fmt::Display for DropReason { fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str(self.code()) } }
pub fn normalize(field: PiiField, input: PiiInput<'_>, _ctx: &NormalizeContext<'_>) -> Result<Normalized, DropReason> {
    let s = match input { PiiInput::Text(t) => t.trim().to_lowercase(), PiiInput::Int(i) => i.to_string(), PiiInput::Date(d) => d.format("%Y%m%d").to_string() };
    if s.is_empty() { return Err(DropReason::Empty); }
    if is_sha256_hex(&s) { return Ok(Normalized::AlreadyHashed(s)); }
    if field == PiiField::Em && !s.contains('@') { return Err(DropReason::InvalidEmail); }
    Ok(Normalized::Plain(s))
}
pub fn normalize_and_hash(field: PiiField, input: PiiInput<'_>, ctx: &NormalizeContext<'_>) -> Result<String, DropReason> {
    Ok(match normalize(field, input, ctx)? { Normalized::Plain(s) => if field == PiiField::ExternalId && ctx.external_id_raw { s } else { sha256_hex(&s) }, Normalized::AlreadyHashed(h) => h })
}
pub fn sha256_hex(s: &str) -> String { Sha256::digest(s.as_bytes()).iter().map(|b| format!("{b:02x}")).collect() }
pub fn country_code(raw: &str) -> Option<&'static str> { match raw.trim().to_lowercase().as_str() { "us" | "usa" => Some("us"), "gb" | "uk" => Some("gb"), _ => None } }
pub fn is_sha256_hex(s: &str) -> bool { let t = s.trim(); t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) }
