//! Which customer identifiers an event carries: the bit set behind the match-key coverage
//! and the rules' too-broad check. Both the event builder and the rules read it, so it sits
//! below them.

use crate::normalize::PiiField;

/// Which customer identifiers an event carried, as a bit set (for coverage and the
/// too-broad check).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Identifiers(pub u32);

/// Identifier names in bit order: the 11 hashed fields, then the plain ones we track.
pub const IDENTIFIER_NAMES: [&str; 16] = [
    "em",
    "ph",
    "fn",
    "ln",
    "ct",
    "st",
    "zp",
    "country",
    "db",
    "ge",
    "external_id",
    "client_ip_address",
    "client_user_agent",
    "fbc",
    "fbp",
    "lead_id",
];
const OTHER_IDENTIFIER_BIT: u32 = 1 << 16;

impl Identifiers {
    pub fn bit(name: &str) -> u32 {
        IDENTIFIER_NAMES
            .iter()
            .position(|n| *n == name)
            .map(|i| 1 << i)
            .unwrap_or(OTHER_IDENTIFIER_BIT)
    }

    /// Marks a hashed field: its bit is its position in `PiiField::ALL`, which
    /// `IDENTIFIER_NAMES` starts with.
    pub fn set_hashed(&mut self, field: PiiField) {
        self.0 |= 1 << (field as u32);
    }

    pub fn set(&mut self, name: &str) {
        self.0 |= Self::bit(name);
    }

    pub fn has(&self, name: &str) -> bool {
        self.0 & Self::bit(name) != 0
    }

    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }

    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        IDENTIFIER_NAMES
            .iter()
            .enumerate()
            .filter(|(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, n)| *n)
    }
}
