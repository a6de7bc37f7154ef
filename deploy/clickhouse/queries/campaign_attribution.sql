-- First-touch and last-touch attribution of ordering customers' revenue to campaigns.
SELECT
    attribution.1 AS model,
    attribution.2 AS campaign,
    count() AS customers,
    sum(revenue) AS revenue
FROM
(
    SELECT
        c.customer_id AS customer_id,
        c.first_campaign AS first_campaign,
        c.last_campaign AS last_campaign,
        j.revenue AS revenue
    FROM
    (
        SELECT
            customer_id,
            argMin(campaign, occurred_at) AS first_campaign,
            argMax(campaign, occurred_at) AS last_campaign
        FROM
        (
            SELECT
                customer_id,
                occurred_at,
                visitParamExtractString(visitParamExtractRaw(context, 'campaign'), 'utm_campaign') AS utm,
                visitParamExtractString(visitParamExtractRaw(context, 'campaign'), 'name') AS named,
                if(named != '', named, utm) AS campaign
            FROM touchpoints FINAL
            WHERE customer_id != '' AND type IN ('ad_impression', 'ad_click', 'email_opened', 'email_clicked')
        )
        WHERE campaign != ''
        GROUP BY customer_id
    ) AS c
    ANY INNER JOIN
    (
        SELECT customer_id, revenue
        FROM customer_journeys FINAL
        WHERE merged_into = '' AND orders > 0
    ) AS j USING (customer_id)
)
ARRAY JOIN [('first_touch', first_campaign), ('last_touch', last_campaign)] AS attribution
GROUP BY model, campaign
ORDER BY model, revenue DESC, campaign
