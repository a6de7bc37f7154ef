-- Service recovery: customers with a bad delivery who contacted support, and how it ended.
SELECT
    countIf(recovery IN ('pending', 'recovered', 'lost')) AS contacted_after_bad_touchpoint,
    countIf(recovery = 'recovered') AS recovered,
    countIf(recovery = 'lost') AS lost,
    countIf(recovery = 'pending') AS still_open,
    countIf(recovery = 'unaddressed') AS bad_touchpoint_no_contact,
    round(100 * countIf(recovery = 'recovered') / greatest(countIf(recovery IN ('recovered', 'lost')), 1), 1) AS recovery_rate_pct
FROM customer_journeys FINAL
WHERE merged_into = ''
