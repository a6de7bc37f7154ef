"""Valid and invalid ``properties`` for every schema version; the tests run them all.

Invalid examples name the field the error must point at, so an example that starts
failing for another reason is caught too.
"""

from __future__ import annotations

from typing import Final

from schemas.properties import DELIVERY_STATUSES, TICKET_CHANNELS

__all__ = ["EXAMPLES"]

#: (type, version) → {"valid": [properties, ...], "invalid": [(properties, field), ...]}
EXAMPLES: Final[dict[tuple[str, int], dict[str, list]]] = {
    ("ad_impression", 1): {
        "valid": [{"ad_id": "ad-1", "campaign": "spring", "placement": "feed"}],
        "invalid": [({"campaign": "spring"}, "$.properties.ad_id"),
                    ({"ad_id": ""}, "$.properties.ad_id")],
    },
    ("ad_click", 1): {
        "valid": [{"ad_id": "ad-1"}],
        "invalid": [({"ad_id": 7}, "$.properties.ad_id")],
    },
    ("email_opened", 1): {
        "valid": [{"email_id": "em-1", "campaign": "newsletter-42"}],
        "invalid": [({}, "$.properties.email_id")],
    },
    ("email_clicked", 1): {
        "valid": [{"email_id": "em-1", "url": "https://shop.example/sale"}],
        "invalid": [({"url": "https://x"}, "$.properties.email_id")],
    },
    ("social_engaged", 1): {
        "valid": [{"network": "instagram", "action": "share"}],
        "invalid": [({"network": "instagram", "action": "poke"}, "$.properties.action")],
    },
    ("page_view", 1): {
        "valid": [{}, {"url": "https://shop.example/", "title": "Home", "custom": 1}],
        "invalid": [({"url": 42}, "$.properties.url")],
    },
    ("product_viewed", 1): {
        "valid": [{"sku": "sku-1", "price": 19.9}, {"sku": "sku-2"}],
        "invalid": [({"sku": "sku-1", "price": -1}, "$.properties.price")],
    },
    ("cart_updated", 1): {
        "valid": [{"action": "add", "sku": "sku-1", "cart_size": 2}],
        "invalid": [({"action": "empty", "sku": "sku-1"}, "$.properties.action")],
    },
    ("checkout_started", 1): {
        "valid": [{"items": 3}, {}],
        "invalid": [({"items": -2}, "$.properties.items")],
    },
    ("order_placed", 1): {
        "valid": [{"order_id": "o-1", "revenue": 59.9, "currency": "EUR"},
                  {"order_id": "o-2", "revenue": 10}],
        "invalid": [({"order_id": "o-1"}, "$.properties.revenue"),
                    ({"order_id": "o-1", "revenue": 5, "currency": "euro"},
                     "$.properties.currency")],
    },
    ("order_placed", 2): {
        "valid": [{"order_id": "o-1", "revenue": 40.0, "currency": "EUR", "discount": 5.0,
                   "items": [{"sku": "sku-1", "quantity": 3, "price": 15.0}]}],
        "invalid": [({"order_id": "o-1", "revenue": 40.0, "currency": "EUR", "items": []},
                     "$.properties.items"),
                    ({"order_id": "o-1", "revenue": 40.0, "currency": "EUR",
                      "items": [{"sku": "sku-1", "quantity": 0, "price": 1.0}]},
                     "$.properties.items[0].quantity")],
    },
    ("payment_failed", 1): {
        "valid": [{"order_id": "o-1", "reason": "card_declined"}, {}],
        "invalid": [({"reason": ["x"]}, "$.properties.reason")],
    },
    ("order_shipped", 1): {
        "valid": [{"order_id": "o-1", "carrier": "dhl"}],
        "invalid": [({"carrier": "dhl"}, "$.properties.order_id")],
    },
    ("delivery_updated", 1): {
        "valid": [{"order_id": "o-1", "status": s}
                  for s in DELIVERY_STATUSES],
        "invalid": [({"order_id": "o-1", "status": "lost"}, "$.properties.status")],
    },
    ("package_opened", 1): {
        "valid": [{"order_id": "o-1"}],
        "invalid": [({}, "$.properties.order_id")],
    },
    ("return_requested", 1): {
        "valid": [{"order_id": "o-1", "reason": "too small"}],
        "invalid": [({"reason": "too small"}, "$.properties.order_id")],
    },
    ("return_completed", 1): {
        "valid": [{"order_id": "o-1", "refund": 19.9}],
        "invalid": [({"order_id": "o-1", "refund": -3}, "$.properties.refund")],
    },
    ("review_submitted", 1): {
        "valid": [{"rating": 5, "text": "Great", "sku": "sku-1"}],
        "invalid": [({"rating": 6}, "$.properties.rating"),
                    ({"text": "ok"}, "$.properties.rating")],
    },
    ("support_ticket_opened", 1): {
        "valid": [{"ticket_id": "t-1", "channel": c} for c in
                  TICKET_CHANNELS],
        "invalid": [({"ticket_id": "t-1", "channel": "pigeon"}, "$.properties.channel")],
    },
    ("support_message", 1): {
        "valid": [{"ticket_id": "t-1", "author": a} for a in ("agent", "customer", "bot")],
        "invalid": [({"ticket_id": "t-1", "author": "robot"}, "$.properties.author")],
    },
    ("support_ticket_resolved", 1): {
        "valid": [{"ticket_id": "t-1"}],
        "invalid": [({}, "$.properties.ticket_id")],
    },
    ("support_ticket_reopened", 1): {
        "valid": [{"ticket_id": "t-1"}],
        "invalid": [({"ticket_id": ""}, "$.properties.ticket_id")],
    },
    ("survey_response", 1): {
        "valid": [{"survey": "nps", "score": 0}, {"survey": "nps", "score": 10},
                  {"survey": "csat", "score": 4, "rates": {"ticket_id": "t-1"}},
                  {"survey": "ces", "score": 7, "rates": {"event_id": "e-9"}}],
        "invalid": [({"survey": "nps", "score": 11}, "$.properties.score"),
                    ({"survey": "csat", "score": 0}, "$.properties.score"),
                    ({"survey": "ces", "score": 8}, "$.properties.score"),
                    ({"survey": "stars", "score": 3}, "$.properties.survey")],
    },
    ("identify", 1): {
        "valid": [{"traits": {"email_domain": "example.com"}}, {}],
        "invalid": [({"traits": "vip"}, "$.properties.traits")],
    },
    ("account_created", 1): {
        "valid": [{}],
        "invalid": [],  # no fields: anything is accepted
    },
    ("subscription_cancelled", 1): {
        "valid": [{"reason": "too expensive", "plan": "pro"}],
        "invalid": [({"plan": 3}, "$.properties.plan")],
    },
}
