-- Top paths to a first order: the distinct channels a customer used before it, in order.
SELECT
    path,
    count() AS customers
FROM
(
    SELECT
        customer_id,
        -- first_order goes into the lambda as an array: 18.16 cannot see it otherwise.
        arrayStringConcat(arrayDistinct(arrayFilter(
            (c, t, f) -> t < f,
            arraySort((c, t) -> t, channels, times), arraySort(times),
            arrayResize([first_order], length(times), first_order))), ' > ') AS path
    FROM
    (
        SELECT
            customer_id,
            groupArray(channel) AS channels,
            groupArray(toUnixTimestamp(occurred_at)) AS times,
            minIf(toUnixTimestamp(occurred_at), type = 'order_placed') AS first_order
        FROM touchpoints FINAL
        WHERE customer_id != ''
        GROUP BY customer_id
        HAVING countIf(type = 'order_placed') > 0
    )
)
GROUP BY path
ORDER BY customers DESC, path
LIMIT 10
