//! Graph-style error envelopes produced by the sandbox.
//!
//! Every rejection is rendered as
//! `{"error":{"message","type","code","error_subcode","is_transient","error_user_title","error_user_msg","fbtrace_id"}}`.
//! `error_subcode` is omitted for generic `(#100)` parameter errors, as Graph does for them, so a
//! sender is exercised on bodies that have no subcode as well.
//!
//! Messages name the event index and the field that failed, never the value (no PII, no tokens).

use serde_json::json;

/// HTTP status + Graph error fields. Built by the validator and the fault injector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GraphError {
    pub http_status: u16,
    pub error_type: &'static str,
    pub code: i64,
    pub subcode: Option<i64>,
    pub is_transient: bool,
    pub message: String,
    pub user_title: String,
    pub user_msg: String,
}

// --- codes -----------------------------------------------------------------------------------

/// Invalid parameter (all payload validation errors).
pub const CODE_INVALID_PARAMETER: i64 = 100;
/// Invalid OAuth access token.
pub const CODE_INVALID_TOKEN: i64 = 190;
/// API Service: temporary downtime (injected failures).
pub const CODE_SERVICE: i64 = 2;
/// The app lacks permission for the action (Dataset Quality API).
pub const CODE_NO_PERMISSION: i64 = 10;
/// The given `dataset_id` does not exist (Dataset Quality API, offline page).
pub const CODE_UNKNOWN_DATASET: i64 = 2044055;
/// User request limit reached (injected throttling).
pub const CODE_USER_REQUEST_LIMIT: i64 = 17;
/// A deprecated (ended) API version. Observed, type OAuthException, no subcode.
pub const CODE_DEPRECATED_VERSION: i64 = 2635;
/// The newest version the sandbox names in its 2635 message.
pub const NEWEST_VERSION: &str = "v27.0";

// --- subcodes (see the table in `mod.rs`) ----------------------------------------------------

/// Unsupported request: wrong method, path, API version or object id. Observed.
pub const SUB_UNSUPPORTED_REQUEST: i64 = 33;
/// `data` has 0 or more than 1,000 events. Meta's subcode is UNCONFIRMED; chosen.
pub const SUB_BATCH_SIZE: i64 = 2804001;
/// `event_time` more than 7 days (62 for physical_store) in the past. Observed.
pub const SUB_TIMESTAMP_TOO_OLD: i64 = 2804003;
/// `event_time` more than 10 minutes in the future. UNCONFIRMED; chosen.
pub const SUB_TIMESTAMP_IN_FUTURE: i64 = 2804004;
/// A required event parameter is missing. UNCONFIRMED; chosen.
pub const SUB_MISSING_PARAMETER: i64 = 2804007;
/// An event parameter has the wrong type or value (also used for injected rejections). UNCONFIRMED; chosen.
pub const SUB_INVALID_EVENT_PARAMETER: i64 = 2804016;
/// A `user_data` key is unknown or has the wrong type/format. UNCONFIRMED; chosen.
pub const SUB_INVALID_USER_DATA: i64 = 2804017;
/// Purchase without a numeric `value` or a valid ISO 4217 `currency`, or an invalid currency.
/// UNCONFIRMED (one third-party fixture ties 2804019 to a missing Purchase value).
pub const SUB_PURCHASE_VALUE_CURRENCY: i64 = 2804019;
/// LDU without valid `data_processing_options_country`/`_state`. Historical (2020) subcode.
pub const SUB_LDU: i64 = 2804030;
/// Invalid `lead_id`. Third-party capture.
pub const SUB_INVALID_LEAD_ID: i64 = 2804036;
/// A field that must be SHA-256 hashed is not a lowercase 64-hex digest (unhashed PII). UNCONFIRMED; chosen.
pub const SUB_NOT_HASHED: i64 = 2804048;
/// No customer information, or only a too-broad combination. Observed.
pub const SUB_INSUFFICIENT_CUSTOMER_INFO: i64 = 2804050;
/// `business_messaging` event without the channel's ids. Third-party capture.
pub const SUB_MESSAGING_IDS: i64 = 2804116;

impl GraphError {
    /// Generic `(#100)` parameter error without a subcode (body syntax, unknown top-level key...).
    pub fn invalid_parameter(detail: impl Into<String>) -> Self {
        let detail = detail.into();
        GraphError {
            http_status: 400,
            error_type: "OAuthException",
            code: CODE_INVALID_PARAMETER,
            subcode: None,
            is_transient: false,
            message: format!("(#100) {detail}"),
            user_title: "Invalid parameter".to_owned(),
            user_msg: detail,
        }
    }

    /// A per-event validation failure: code 100 with a 2804xxx subcode.
    pub fn event(subcode: i64, title: &str, detail: impl Into<String>) -> Self {
        GraphError {
            http_status: 400,
            error_type: "OAuthException",
            code: CODE_INVALID_PARAMETER,
            subcode: Some(subcode),
            is_transient: false,
            message: "Invalid parameter".to_owned(),
            user_title: title.to_owned(),
            user_msg: detail.into(),
        }
    }

    /// Wrong method/path/version/id: 100/33 "Unsupported ... request".
    pub fn unsupported_request(method: &str, object: &str) -> Self {
        let m = method.to_ascii_lowercase();
        GraphError {
            http_status: 400,
            error_type: "GraphMethodException",
            code: CODE_INVALID_PARAMETER,
            subcode: Some(SUB_UNSUPPORTED_REQUEST),
            is_transient: false,
            message: format!(
                "Unsupported {m} request. Object with ID '{object}' does not exist, cannot be loaded due to \
                 missing permissions, or does not support this operation."
            ),
            user_title: "Unsupported request".to_owned(),
            user_msg: "Use POST /vNN.N/{pixel_or_dataset_id}/events.".to_owned(),
        }
    }

    /// A call to a version that has ended: code 2635, whose message begins "(#2635) You are
    /// calling a deprecated version of the Ads API" and names the latest version
    /// (https://developers.facebook.com/blog/post/2024/04/16/upcoming-change-in-marketing-api-version-deprecation).
    /// Captures show no subcode and no user title; the HTTP status is not documented, 400 is
    /// chosen like Meta's other request errors.
    pub fn deprecated_version() -> Self {
        GraphError {
            http_status: 400,
            error_type: "OAuthException",
            code: CODE_DEPRECATED_VERSION,
            subcode: None,
            is_transient: false,
            message: format!(
                "(#2635) You are calling a deprecated version of the Ads API. Please update to the latest version: {NEWEST_VERSION}."
            ),
            user_title: String::new(),
            user_msg: String::new(),
        }
    }

    /// Missing or wrong access token: HTTP 401, code 190.
    pub fn invalid_token() -> Self {
        GraphError {
            http_status: 401,
            error_type: "OAuthException",
            code: CODE_INVALID_TOKEN,
            subcode: None,
            is_transient: false,
            message: "Invalid OAuth access token - Cannot parse access token".to_owned(),
            user_title: "Invalid access token".to_owned(),
            user_msg: "The access token is missing or is not valid for this dataset.".to_owned(),
        }
    }

    /// The app lacks the permission for the action: code 10 (Dataset Quality API, offline
    /// page's error table; the web page lists the permissions and dataset roles needed).
    pub fn no_permission() -> Self {
        GraphError {
            http_status: 400,
            error_type: "OAuthException",
            code: CODE_NO_PERMISSION,
            subcode: None,
            is_transient: false,
            message: "(#10) Application does not have permission for this action".to_owned(),
            user_title: "Permission denied".to_owned(),
            user_msg: "The app or user cannot read this dataset's quality.".to_owned(),
        }
    }

    /// The `dataset_id` does not exist: code 2044055 (the offline page's error table).
    pub fn unknown_dataset() -> Self {
        GraphError {
            http_status: 400,
            error_type: "OAuthException",
            code: CODE_UNKNOWN_DATASET,
            subcode: None,
            is_transient: false,
            message: "The given dataset_id does not exist".to_owned(),
            user_title: "Unknown dataset".to_owned(),
            user_msg: "No dataset with this id.".to_owned(),
        }
    }

    /// Injected backend failure: HTTP 500, code 2, transient.
    pub fn transient_failure() -> Self {
        GraphError {
            http_status: 500,
            error_type: "OAuthException",
            code: CODE_SERVICE,
            subcode: None,
            is_transient: true,
            message: "An unexpected error has occurred. Please retry your request later."
                .to_owned(),
            user_title: "Service temporarily unavailable".to_owned(),
            user_msg: "A temporary error occurred. Retry the request later.".to_owned(),
        }
    }

    /// Injected throttling: HTTP 400, code 17 "User request limit reached", transient.
    pub fn throttled() -> Self {
        GraphError {
            http_status: 400,
            error_type: "OAuthException",
            code: CODE_USER_REQUEST_LIMIT,
            subcode: Some(2446079),
            is_transient: true,
            message: "(#17) User request limit reached".to_owned(),
            user_title: "Request limit reached".to_owned(),
            user_msg: "Too many calls were made. Wait a bit and retry.".to_owned(),
        }
    }

    /// The JSON body for this error.
    pub fn to_body(&self, fbtrace_id: &str) -> Vec<u8> {
        let mut err = json!({
            "message": self.message,
            "type": self.error_type,
            "code": self.code,
            "is_transient": self.is_transient,
            "fbtrace_id": fbtrace_id,
        });
        // An error without user-facing texts (2635) has none in Meta's captures either.
        if !self.user_title.is_empty() {
            err["error_user_title"] = json!(self.user_title);
        }
        if !self.user_msg.is_empty() {
            err["error_user_msg"] = json!(self.user_msg);
        }
        if let Some(sub) = self.subcode {
            err["error_subcode"] = json!(sub);
        }
        serde_json::to_vec(&json!({ "error": err })).expect("serializing a Value cannot fail")
    }
}
