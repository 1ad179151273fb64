//! Which Conversions API parameter a model column or constant stands for.
//!
//! Names follow Meta's server-event, customer-information and custom-data parameter pages
//! (see `capi-reference.md` §2–§4). A dotted path (`custom_data.lead_event_source`) names a
//! nested key explicitly; a bare name is looked up among the top-level, `user_data` and
//! standard `custom_data` keys, in that order.

use crate::normalize::PiiField;

/// Top-level server-event fields we map from columns or constants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TopField {
    EventName,
    EventTime,
    EventId,
    ActionSource,
    EventSourceUrl,
    OptOut,
    ReferrerUrl,
    DataProcessingOptions,
    DataProcessingOptionsCountry,
    DataProcessingOptionsState,
    MessagingChannel,
    CustomerSegmentation,
}

impl TopField {
    pub const ALL: [TopField; 12] = [
        TopField::EventName,
        TopField::EventTime,
        TopField::EventId,
        TopField::ActionSource,
        TopField::EventSourceUrl,
        TopField::OptOut,
        TopField::ReferrerUrl,
        TopField::DataProcessingOptions,
        TopField::DataProcessingOptionsCountry,
        TopField::DataProcessingOptionsState,
        TopField::MessagingChannel,
        TopField::CustomerSegmentation,
    ];

    pub fn key(self) -> &'static str {
        match self {
            TopField::EventName => "event_name",
            TopField::EventTime => "event_time",
            TopField::EventId => "event_id",
            TopField::ActionSource => "action_source",
            TopField::EventSourceUrl => "event_source_url",
            TopField::OptOut => "opt_out",
            TopField::ReferrerUrl => "referrer_url",
            TopField::DataProcessingOptions => "data_processing_options",
            TopField::DataProcessingOptionsCountry => "data_processing_options_country",
            TopField::DataProcessingOptionsState => "data_processing_options_state",
            TopField::MessagingChannel => "messaging_channel",
            TopField::CustomerSegmentation => "customer_segmentation",
        }
    }

    fn from_key(key: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.key() == key)
    }
}

/// `user_data` keys that are sent as they are (Meta: "do not hash").
pub const PLAIN_USER_DATA_KEYS: &[&str] = &[
    "client_ip_address",
    "client_user_agent",
    "fbc",
    "fbp",
    "subscription_id",
    "anon_id",
    "madid",
    "page_id",
    "page_scoped_user_id",
    "ctwa_clid",
    "ig_account_id",
    "ig_sid",
    "whatsapp_business_account_id",
    "instagram_business_account_id",
];

/// `user_data` keys that Meta types as integers; sent as JSON integers without float rounding.
pub const INTEGER_USER_DATA_KEYS: &[&str] = &["lead_id", "fb_login_id"];

/// Standard `custom_data` keys (Meta's custom-data parameter page and the SDKs' CustomData).
pub const STANDARD_CUSTOM_DATA_KEYS: &[&str] = &[
    "value",
    "currency",
    "content_ids",
    "contents",
    "content_type",
    "content_name",
    "content_category",
    "order_id",
    "predicted_ltv",
    "net_revenue",
    "num_items",
    "search_string",
    "status",
    "delivery_category",
    "item_number",
    "lead_event_source",
    "event_source",
];

/// Nested objects other than `user_data`/`custom_data` whose keys we pass through.
pub const OTHER_OBJECTS: &[&str] = &["app_data", "original_event_data"];

/// A `user_data` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UserDataKey {
    Hashed(PiiField),
    Plain(&'static str),
    Integer(&'static str),
}

impl UserDataKey {
    pub fn key(self) -> &'static str {
        match self {
            UserDataKey::Hashed(f) => f.key(),
            UserDataKey::Plain(k) | UserDataKey::Integer(k) => k,
        }
    }

    pub fn from_key(key: &str) -> Option<Self> {
        if let Some(f) = PiiField::from_key(key) {
            return Some(UserDataKey::Hashed(f));
        }
        if let Some(k) = PLAIN_USER_DATA_KEYS.iter().find(|k| **k == key) {
            return Some(UserDataKey::Plain(k));
        }
        INTEGER_USER_DATA_KEYS
            .iter()
            .find(|k| **k == key)
            .map(|k| UserDataKey::Integer(k))
    }
}

/// Where a value goes in the event.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    Top(TopField),
    UserData(UserDataKey),
    CustomData(String),
    /// `app_data.x`, `original_event_data.x`.
    Nested {
        object: &'static str,
        key: String,
    },
}

impl Target {
    /// The parameter path as a user writes it.
    pub fn path(&self) -> String {
        match self {
            Target::Top(f) => f.key().to_string(),
            Target::UserData(k) => format!("user_data.{}", k.key()),
            Target::CustomData(k) => format!("custom_data.{k}"),
            Target::Nested { object, key } => format!("{object}.{key}"),
        }
    }
}

/// Why a name does not resolve to a parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolveError {
    /// A bare name that is no known parameter.
    Unknown(String),
    /// `user_data.x` where x is not a customer-information key.
    UnknownUserDataKey(String),
    /// `foo.bar` where foo is not an object we send.
    UnknownObject(String),
}

impl std::fmt::Display for ResolveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResolveError::Unknown(n) => write!(
                f,
                "`{n}` is not a Conversions API parameter (name the column after one, e.g. `em`, \
                 `event_time`, `value`, or write a dotted path such as \"custom_data.{n}\")"
            ),
            ResolveError::UnknownUserDataKey(k) => write!(
                f,
                "`user_data.{k}` is not a customer-information parameter Meta accepts"
            ),
            ResolveError::UnknownObject(o) => write!(
                f,
                "`{o}` is not an event object (use user_data, custom_data, app_data or original_event_data)"
            ),
        }
    }
}

/// Resolves a column name or constant key to the parameter it stands for.
pub fn resolve(name: &str) -> Result<Target, ResolveError> {
    let name = name.trim();
    if let Some((object, key)) = name.split_once('.') {
        let key = key.to_string();
        return match object {
            "user_data" => UserDataKey::from_key(&key)
                .map(Target::UserData)
                .ok_or(ResolveError::UnknownUserDataKey(key)),
            "custom_data" if !key.is_empty() => Ok(Target::CustomData(key)),
            o => match OTHER_OBJECTS.iter().find(|x| **x == o) {
                Some(object) if !key.is_empty() => Ok(Target::Nested { object, key }),
                _ => Err(ResolveError::UnknownObject(o.to_string())),
            },
        };
    }
    if let Some(f) = TopField::from_key(name) {
        return Ok(Target::Top(f));
    }
    if let Some(k) = UserDataKey::from_key(name) {
        return Ok(Target::UserData(k));
    }
    if STANDARD_CUSTOM_DATA_KEYS.contains(&name) {
        return Ok(Target::CustomData(name.to_string()));
    }
    Err(ResolveError::Unknown(name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_names_resolve_to_their_object() {
        assert_eq!(
            resolve("event_time").unwrap(),
            Target::Top(TopField::EventTime)
        );
        assert_eq!(
            resolve("em").unwrap(),
            Target::UserData(UserDataKey::Hashed(PiiField::Em))
        );
        assert_eq!(
            resolve("lead_id").unwrap(),
            Target::UserData(UserDataKey::Integer("lead_id"))
        );
        assert_eq!(
            resolve("value").unwrap(),
            Target::CustomData("value".into())
        );
    }

    #[test]
    fn dotted_paths_resolve() {
        assert_eq!(
            resolve("custom_data.lead_event_source").unwrap(),
            Target::CustomData("lead_event_source".into())
        );
        assert_eq!(
            resolve("custom_data.my_own_property").unwrap(),
            Target::CustomData("my_own_property".into())
        );
        assert_eq!(
            resolve("user_data.fbp").unwrap(),
            Target::UserData(UserDataKey::Plain("fbp"))
        );
        assert_eq!(
            resolve("app_data.advertiser_tracking_enabled").unwrap(),
            Target::Nested {
                object: "app_data",
                key: "advertiser_tracking_enabled".into()
            }
        );
    }

    #[test]
    fn unknown_names_are_errors() {
        assert!(matches!(
            resolve("email_address"),
            Err(ResolveError::Unknown(_))
        ));
        assert!(matches!(
            resolve("user_data.email"),
            Err(ResolveError::UnknownUserDataKey(_))
        ));
        assert!(matches!(
            resolve("foo.bar"),
            Err(ResolveError::UnknownObject(_))
        ));
    }
}
