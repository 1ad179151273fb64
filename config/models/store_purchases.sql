-- One row per in-store sale. event_name and action_source come from the model's constants.
SELECT
    sale_id,
    updated_at,
    sold_at          AS event_time,
    amount           AS value,
    currency,
    sale_id          AS order_id,
    store_code       AS "custom_data.store_code",
    customer_email   AS em,
    customer_phone   AS ph,
    customer_zip     AS zp,
    customer_country AS country,
    loyalty_id       AS external_id
FROM store.sales
