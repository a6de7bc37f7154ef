-- Touchpoints per channel and type over the last 90 days of event time.
SELECT
    channel,
    type,
    count() AS touchpoints,
    uniqExact(journey_key) AS journeys
FROM touchpoints FINAL
WHERE occurred_at >= now() - INTERVAL 90 DAY
GROUP BY channel, type
ORDER BY touchpoints DESC, channel, type
LIMIT 10
