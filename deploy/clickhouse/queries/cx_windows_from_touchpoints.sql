-- CX metric windows recomputed from the raw touchpoints: an audit of cx_metrics.
-- Same metrics, dimensions, windows and starts as the stream; its final rows must
-- agree (add e.g. WHERE window = '24h' to narrow it). Ratio metrics only: NPS and CSAT
-- in %, CES as a mean, on-time and damaged deliveries in %, and the contact rate
-- (tickets opened per 100 orders placed), each order, ticket and parcel status counted
-- once however many event ids it came under.
SELECT
    metric,
    dimension,
    window,
    toDateTime(start, 'UTC') AS window_start,
    toDateTime(start + size, 'UTC') AS window_end,
    if(sum(d) > 0, any(scale) * sum(x) / sum(d), NULL) AS value,
    sum(x) AS numerator,
    sum(d) AS denominator,
    count() AS samples
FROM
(
    -- every window of the spec that holds the touchpoint (epoch-aligned hops)
    SELECT
        metric, dimension, x, d, scale, spec.1 AS window, spec.3 AS size,
        intDiv(ts, spec.2) * spec.2 - arrayJoin(range(intDiv(spec.3, spec.2))) * spec.2 AS start
    FROM
    (
        SELECT
            toUInt32(occurred_at) AS ts,
            -- (metric, numerator, denominator, scale) of each contribution
            arrayJoin(multiIf(
                type = 'survey_response',
                [(survey,
                  toFloat64(multiIf(survey = 'nps', (score >= 9) - (score <= 6),
                                    survey = 'csat', score >= 4, score)),
                  toFloat64(1), toFloat64(if(survey = 'ces', 1, 100)))],
                type = 'delivery_updated',
                [('on_time_rate', toFloat64(status = 'on_time'), toFloat64(1), toFloat64(100)),
                 ('damaged_rate', toFloat64(status = 'damaged'), toFloat64(1), toFloat64(100))],
                [('contact_rate', toFloat64(type = 'support_ticket_opened'),
                  toFloat64(type = 'order_placed'), toFloat64(100))])) AS m,
            m.1 AS metric,
            m.2 AS x,
            m.3 AS d,
            m.4 AS scale,
            arrayJoin(if(type = 'survey_response',
                arrayConcat(['all', concat('channel=', channel)],
                            if(rated_key = '', ['rated=none'],
                               if(rated = '', emptyArrayString(), [concat('rated=', rated)]))),
                ['all'])) AS dimension,
            arrayJoin([('1m', toUInt32(60), toUInt32(60)),
                       ('1h', toUInt32(300), toUInt32(3600)),
                       ('24h', toUInt32(3600), toUInt32(86400)),
                       ('7d', toUInt32(86400), toUInt32(604800)),
                       ('30d', toUInt32(86400), toUInt32(2592000))]) AS spec
        FROM
        (
            -- survey answers, deliveries, orders and tickets; what each answer rates
            SELECT
                type, occurred_at, channel,
                visitParamExtractString(properties, 'survey') AS survey,
                visitParamExtractInt(properties, 'score') AS score,
                visitParamExtractString(properties, 'status') AS status,
                if(type = 'survey_response', multiIf(
                    visitParamExtractString(properties, 'ticket_id') != '',
                    concat('ticket:', visitParamExtractString(properties, 'ticket_id')),
                    visitParamExtractString(properties, 'order_id') != '',
                    concat('order:', visitParamExtractString(properties, 'order_id')),
                    visitParamExtractString(properties, 'event_id') != '',
                    concat('touchpoint:', visitParamExtractString(properties, 'event_id')),
                    ''), '') AS rated_key
            FROM touchpoints FINAL
            WHERE type IN ('survey_response', 'order_placed', 'support_ticket_opened')
               OR (type = 'delivery_updated'
                   AND visitParamExtractString(properties, 'status')
                       IN ('on_time', 'late', 'damaged'))
            -- an order, a ticket's opening, a parcel's status: once each (the earliest
            -- copy), however many event ids it was sent under
            ORDER BY occurred_at, event_id
            LIMIT 1 BY journey_key, multiIf(
                type = 'order_placed',
                concat('order:', visitParamExtractString(properties, 'order_id')),
                type = 'support_ticket_opened',
                concat('ticket:', visitParamExtractString(properties, 'ticket_id')),
                type = 'delivery_updated',
                concat('delivery:', visitParamExtractString(properties, 'order_id'), ':', status),
                concat('event:', event_id))
        ) AS answers
        ANY LEFT JOIN
        (
            -- what can be rated: a ticket (its support channel), an order (the channel
            -- it was placed through), any touchpoint (its channel)
            SELECT
                concat('ticket:', visitParamExtractString(properties, 'ticket_id')) AS rated_key,
                concat('ticket:', visitParamExtractString(properties, 'channel')) AS rated
            FROM touchpoints FINAL
            WHERE type = 'support_ticket_opened'
            UNION ALL
            SELECT
                concat('order:', visitParamExtractString(properties, 'order_id')) AS rated_key,
                concat('order:', channel) AS rated
            FROM touchpoints FINAL
            WHERE type = 'order_placed'
            UNION ALL
            SELECT concat('touchpoint:', event_id) AS rated_key,
                   concat('touchpoint:', channel) AS rated
            FROM touchpoints FINAL
        ) AS rateable USING (rated_key)
    )
)
GROUP BY metric, dimension, window, start, size
ORDER BY metric, dimension, window, window_start
