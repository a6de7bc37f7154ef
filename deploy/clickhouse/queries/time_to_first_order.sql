-- Median and 90th percentile time from first touch to first order, in hours.
SELECT
    count() AS customers_with_an_order,
    round(quantileExact(0.5)(toUnixTimestamp(assumeNotNull(first_order_at)) - toUnixTimestamp(first_seen)) / 3600, 2) AS median_hours,
    round(quantileExact(0.9)(toUnixTimestamp(assumeNotNull(first_order_at)) - toUnixTimestamp(first_seen)) / 3600, 2) AS p90_hours
FROM customer_journeys FINAL
WHERE merged_into = '' AND first_order_at IS NOT NULL
