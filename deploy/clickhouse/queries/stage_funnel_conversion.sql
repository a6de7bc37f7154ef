-- Stage funnel: how many journeys ever reached each stage, as a share of all journeys.
SELECT
    stage,
    countIf(has(stage_names, stage)) AS journeys_reached,
    round(100 * countIf(has(stage_names, stage)) / count(), 1) AS pct_of_journeys
FROM customer_journeys FINAL
ARRAY JOIN ['awareness', 'consideration', 'purchase', 'fulfilment', 'post_purchase', 'loyal'] AS stage
WHERE merged_into = ''
GROUP BY stage
ORDER BY indexOf(['awareness', 'consideration', 'purchase', 'fulfilment', 'post_purchase', 'loyal'], stage)
