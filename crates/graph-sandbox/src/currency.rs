//! Active ISO 4217 currency codes (late 2026), sorted for binary search.
//!
//! ANG (replaced by XCG in 2025) and BGN (Bulgaria joined the euro in 2026) are kept: they left
//! ISO 4217 recently and whether Meta still takes them is UNCONFIRMED, so the sandbox does not
//! refuse them. Older withdrawn codes are left out (HRK 2023, CUC 2021, SLL, ZWL 2024), as are
//! precious metals, bond units, SDR, the test code and "no currency" (XAG, XAU, XBA-XBD, XDR, XPD,
//! XPT, XSU, XTS, XUA, XXX): none is a price currency. Fund codes (BOV, CHE, CHW, CLF, COU, MXV,
//! USN, UYI, UYW) are ISO-active and kept.

const CODES: &[&str] = &[
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT",
    "BGN", "BHD", "BIF", "BMD", "BND", "BOB", "BOV", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD",
    "CAD", "CDF", "CHE", "CHF", "CHW", "CLF", "CLP", "CNY", "COP", "COU", "CRC", "CUP", "CVE",
    "CZK", "DJF", "DKK", "DOP", "DZD", "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL",
    "GHS", "GIP", "GMD", "GNF", "GTQ", "GYD", "HKD", "HNL", "HTG", "HUF", "IDR", "ILS", "INR",
    "IQD", "IRR", "ISK", "JMD", "JOD", "JPY", "KES", "KGS", "KHR", "KMF", "KPW", "KRW", "KWD",
    "KYD", "KZT", "LAK", "LBP", "LKR", "LRD", "LSL", "LYD", "MAD", "MDL", "MGA", "MKD", "MMK",
    "MNT", "MOP", "MRU", "MUR", "MVR", "MWK", "MXN", "MXV", "MYR", "MZN", "NAD", "NGN", "NIO",
    "NOK", "NPR", "NZD", "OMR", "PAB", "PEN", "PGK", "PHP", "PKR", "PLN", "PYG", "QAR", "RON",
    "RSD", "RUB", "RWF", "SAR", "SBD", "SCR", "SDG", "SEK", "SGD", "SHP", "SLE", "SOS", "SRD",
    "SSP", "STN", "SVC", "SYP", "SZL", "THB", "TJS", "TMT", "TND", "TOP", "TRY", "TTD", "TWD",
    "TZS", "UAH", "UGX", "USD", "USN", "UYI", "UYU", "UYW", "UZS", "VED", "VES", "VND", "VUV",
    "WST", "XAF", "XCD", "XCG", "XOF", "XPF", "YER", "ZAR", "ZMW", "ZWG",
];

/// Three ASCII letters (any case) naming an active ISO 4217 currency.
pub fn is_iso4217(code: &str) -> bool {
    let b = code.as_bytes();
    if b.len() != 3 || !b.iter().all(u8::is_ascii_alphabetic) {
        return false;
    }
    let up = [
        b[0].to_ascii_uppercase(),
        b[1].to_ascii_uppercase(),
        b[2].to_ascii_uppercase(),
    ];
    CODES
        .binary_search_by(|c| c.as_bytes().cmp(&up[..]))
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_is_sorted_and_lookup_is_case_insensitive() {
        assert!(CODES.windows(2).all(|w| w[0] < w[1]));
        assert!(is_iso4217("USD") && is_iso4217("usd") && is_iso4217("Eur") && is_iso4217("ZWG"));
        assert!(
            !is_iso4217("XYZ") && !is_iso4217("US") && !is_iso4217("USDD") && !is_iso4217("HRK")
        );
    }
}
