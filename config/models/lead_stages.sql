-- One row per lead stage change. Output columns are named after Conversions API parameters;
-- lead_event_id (the key) and updated_at (the cursor) need no mapping.
SELECT
    lead_event_id,
    updated_at,
    stage            AS event_name,
    stage_changed_at AS event_time,
    lead_id,
    email            AS em,
    phone            AS ph,
    first_name       AS fn,
    last_name        AS ln,
    city             AS ct,
    state            AS st,
    zip              AS zp,
    country
FROM crm.lead_events
