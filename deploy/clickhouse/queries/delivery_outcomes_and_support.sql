-- Delivery outcomes, and how many of those customers opened a support ticket:
-- the bad touchpoint that makes or breaks a customer.
SELECT
    d.outcome AS outcome,
    count() AS deliveries,
    countIf(t.tickets > 0) AS customers_contacting_support,
    round(100 * countIf(t.tickets > 0) / count(), 1) AS contact_rate_pct
FROM
(
    -- each parcel status once, however many event ids it came under
    SELECT DISTINCT journey_key, visitParamExtractString(properties, 'order_id') AS order_id,
           visitParamExtractString(properties, 'status') AS outcome
    FROM touchpoints FINAL
    WHERE type = 'delivery_updated'
) AS d
ANY LEFT JOIN
(
    SELECT journey_key, uniqExact(visitParamExtractString(properties, 'ticket_id')) AS tickets
    FROM touchpoints FINAL
    WHERE type = 'support_ticket_opened'
    GROUP BY journey_key
) AS t USING (journey_key)
GROUP BY outcome
ORDER BY deliveries DESC, outcome
