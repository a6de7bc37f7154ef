-- Journeys by their current stage, with orders and revenue.
SELECT
    stage,
    count() AS journeys,
    countIf(customer_id != '') AS identified,
    sum(orders) AS orders,
    sum(revenue) AS revenue
FROM customer_journeys FINAL
WHERE merged_into = ''
GROUP BY stage
ORDER BY indexOf(['awareness', 'consideration', 'purchase', 'fulfilment', 'post_purchase', 'loyal', 'churned'], stage)
