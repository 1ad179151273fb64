//! Why a row is refused, as an enum with a stable text form. The text is what `refused_rows`
//! stores, what `refused` and the metrics show, and what operators filter on: a variant's text
//! never changes, and a new reason is a new variant.

/// The reason code of a refused row (by our rules, or by Meta for `rejected_by_meta`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalReason {
    CustomerInformationTooBroad,
    DuplicateEventId,
    DuplicatePrimaryKey,
    EventTimeInFuture,
    EventTimeTooOld,
    InvalidActionSource,
    InvalidContents,
    InvalidCurrency,
    InvalidEventId,
    InvalidEventName,
    InvalidEventTime,
    InvalidLeadId,
    InvalidNumItems,
    InvalidValue,
    MissingActionSource,
    MissingAppData,
    MissingClientUserAgent,
    MissingEventName,
    MissingEventSourceUrl,
    MissingEventTime,
    MissingLeadEventSource,
    MissingMessagingChannel,
    MissingMessagingIds,
    NoCustomerInformation,
    PurchaseMissingCurrency,
    PurchaseMissingValue,
    RejectedByMeta,
}

impl RefusalReason {
    /// Every reason, for tests and documentation.
    pub const ALL: [RefusalReason; 27] = [
        RefusalReason::CustomerInformationTooBroad,
        RefusalReason::DuplicateEventId,
        RefusalReason::DuplicatePrimaryKey,
        RefusalReason::EventTimeInFuture,
        RefusalReason::EventTimeTooOld,
        RefusalReason::InvalidActionSource,
        RefusalReason::InvalidContents,
        RefusalReason::InvalidCurrency,
        RefusalReason::InvalidEventId,
        RefusalReason::InvalidEventName,
        RefusalReason::InvalidEventTime,
        RefusalReason::InvalidLeadId,
        RefusalReason::InvalidNumItems,
        RefusalReason::InvalidValue,
        RefusalReason::MissingActionSource,
        RefusalReason::MissingAppData,
        RefusalReason::MissingClientUserAgent,
        RefusalReason::MissingEventName,
        RefusalReason::MissingEventSourceUrl,
        RefusalReason::MissingEventTime,
        RefusalReason::MissingLeadEventSource,
        RefusalReason::MissingMessagingChannel,
        RefusalReason::MissingMessagingIds,
        RefusalReason::NoCustomerInformation,
        RefusalReason::PurchaseMissingCurrency,
        RefusalReason::PurchaseMissingValue,
        RefusalReason::RejectedByMeta,
    ];

    /// The stable snake_case code.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::CustomerInformationTooBroad => "customer_information_too_broad",
            RefusalReason::DuplicateEventId => "duplicate_event_id",
            RefusalReason::DuplicatePrimaryKey => "duplicate_primary_key",
            RefusalReason::EventTimeInFuture => "event_time_in_future",
            RefusalReason::EventTimeTooOld => "event_time_too_old",
            RefusalReason::InvalidActionSource => "invalid_action_source",
            RefusalReason::InvalidContents => "invalid_contents",
            RefusalReason::InvalidCurrency => "invalid_currency",
            RefusalReason::InvalidEventId => "invalid_event_id",
            RefusalReason::InvalidEventName => "invalid_event_name",
            RefusalReason::InvalidEventTime => "invalid_event_time",
            RefusalReason::InvalidLeadId => "invalid_lead_id",
            RefusalReason::InvalidNumItems => "invalid_num_items",
            RefusalReason::InvalidValue => "invalid_value",
            RefusalReason::MissingActionSource => "missing_action_source",
            RefusalReason::MissingAppData => "missing_app_data",
            RefusalReason::MissingClientUserAgent => "missing_client_user_agent",
            RefusalReason::MissingEventName => "missing_event_name",
            RefusalReason::MissingEventSourceUrl => "missing_event_source_url",
            RefusalReason::MissingEventTime => "missing_event_time",
            RefusalReason::MissingLeadEventSource => "missing_lead_event_source",
            RefusalReason::MissingMessagingChannel => "missing_messaging_channel",
            RefusalReason::MissingMessagingIds => "missing_messaging_ids",
            RefusalReason::NoCustomerInformation => "no_customer_information",
            RefusalReason::PurchaseMissingCurrency => "purchase_missing_currency",
            RefusalReason::PurchaseMissingValue => "purchase_missing_value",
            RefusalReason::RejectedByMeta => "rejected_by_meta",
        }
    }
}

impl std::fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The code reads as text wherever text is expected (`reason.is_empty()`, `&reason[..]`).
impl std::ops::Deref for RefusalReason {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq<&str> for RefusalReason {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<str> for RefusalReason {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_is_a_distinct_snake_case_code() {
        let codes: std::collections::HashSet<&str> =
            RefusalReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(codes.len(), RefusalReason::ALL.len());
        for code in codes {
            assert!(
                !code.is_empty() && code.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{code}"
            );
        }
        assert_eq!(
            RefusalReason::DuplicateEventId.to_string(),
            "duplicate_event_id"
        );
        assert_eq!(RefusalReason::RejectedByMeta.as_str(), "rejected_by_meta");
    }
}
