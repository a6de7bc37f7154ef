-- CX metric windows as they stand now: the latest revision of each closed window, and how many samples it lacks.
-- A window's row is written when it closes (final = 1, revision = 0) and again each
-- time data that came late changes it (revision 1, 2, ...; late_samples: how many of
-- its samples came after its first final row), for JOURNEY_CX_REVISION_DAYS after its
-- end. Data later than that misses it: missing_samples counts those samples (from
-- cx_missed), and a window that only such data would have made has no value at all.
SELECT
    metric,
    dimension,
    window,
    window_start,
    toDateTime(window_start + multiIf(window = '1m', 60, window = '1h', 3600,
                                      window = '24h', 86400, window = '7d', 604800, 2592000),
               'UTC') AS window_end,
    value,
    samples,
    revision,
    late_samples,
    missing_samples
FROM
(
    SELECT metric, dimension, window, window_start, value, samples, revision, late_samples
    FROM cx_metrics FINAL
    WHERE final = 1
) AS latest
ALL FULL OUTER JOIN
(
    -- every window that holds a missed contribution and ended by its lacking_through
    SELECT metric, dimension, window, window_start, sum(samples) AS missing_samples
    FROM
    (
        SELECT
            metric, dimension, samples, lacking_through,
            spec.1 AS window, spec.3 AS size,
            toDateTime(intDiv(toUInt32(occurred_at), spec.2) * spec.2
                       - arrayJoin(range(intDiv(spec.3, spec.2))) * spec.2, 'UTC') AS window_start
        FROM cx_missed FINAL
        ARRAY JOIN [('1m', toUInt32(60), toUInt32(60)),
                    ('1h', toUInt32(300), toUInt32(3600)),
                    ('24h', toUInt32(3600), toUInt32(86400)),
                    ('7d', toUInt32(86400), toUInt32(604800)),
                    ('30d', toUInt32(86400), toUInt32(2592000))] AS spec
    )
    WHERE window_start + size <= lacking_through
    GROUP BY metric, dimension, window, window_start
) AS missed USING (metric, dimension, window, window_start)
ORDER BY metric, dimension, window, window_start
