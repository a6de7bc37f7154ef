"""What each touchpoint type carries in ``properties``, per version.

Models are the single source of truth: the SDK, the collector and the worker validate
with them, and ``journey schemas export`` generates JSON Schema from them for
producers in other languages. Unknown extra properties are kept, not rejected: shops
add their own. A new version of a type is a new model registered beside the old one;
both stay accepted.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

import msgspec

__all__ = ["DELIVERY_STATUSES", "LATEST", "MAX_AMOUNT", "MAX_NAME", "MAX_TEXT", "SCHEMAS",
           "TICKET_CHANNELS", "properties_model"]

#: The largest amount (revenue, price, refund) accepted. A journey's revenue is the sum
#: of its orders in a Decimal(18, 2) column (below 10^16), so one order stays far below
#: it: 10^11 (a hundred billion, in any currency) leaves room for 10^5 such orders.
MAX_AMOUNT: Final = 1e11
#: Ids and short names (order ids, carriers, campaigns, reasons) are at most this long.
MAX_NAME: Final = 256
#: Free text (urls, titles, review texts, comments) is at most this long.
MAX_TEXT: Final = 8192

_Str = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME)]
_Name = Annotated[str, msgspec.Meta(max_length=MAX_NAME)]
_Text = Annotated[str, msgspec.Meta(max_length=MAX_TEXT)]
_Money = Annotated[float, msgspec.Meta(ge=0, le=MAX_AMOUNT)]
_Currency = Annotated[str, msgspec.Meta(pattern="^[A-Z]{3}$")]

DeliveryStatus = Literal["on_time", "late", "damaged", "failed", "returned"]
TicketChannel = Literal["chat", "email", "phone", "social", "in_store"]
DELIVERY_STATUSES: Final = DeliveryStatus.__args__
TICKET_CHANNELS: Final = TicketChannel.__args__


class Properties(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Base of every properties model (no fields: types with none accept any extras)."""


# ── awareness ────────────────────────────────────────────────────────────────
class AdImpression(Properties):
    ad_id: _Str
    campaign: _Name | None = None
    placement: _Name | None = None


class AdClick(Properties):
    ad_id: _Str
    campaign: _Name | None = None


class EmailOpened(Properties):
    email_id: _Str
    campaign: _Name | None = None


class EmailClicked(Properties):
    email_id: _Str
    url: _Text | None = None


class SocialEngaged(Properties):
    network: _Str
    action: Literal["like", "share", "comment", "follow", "mention"]


# ── consideration ────────────────────────────────────────────────────────────
class PageView(Properties):
    url: _Text | None = None
    title: _Text | None = None


class ProductViewed(Properties):
    sku: _Str
    price: _Money | None = None


class CartUpdated(Properties):
    action: Literal["add", "remove"]
    sku: _Str
    cart_size: Annotated[int, msgspec.Meta(ge=0)] | None = None


class CheckoutStarted(Properties):
    items: Annotated[int, msgspec.Meta(ge=0)] | None = None


# ── purchase ─────────────────────────────────────────────────────────────────
class OrderPlaced(Properties):
    order_id: _Str
    revenue: _Money
    currency: _Currency | None = None


class OrderItem(msgspec.Struct, kw_only=True):
    sku: _Str
    quantity: Annotated[int, msgspec.Meta(ge=1)]
    price: _Money


class OrderPlacedV2(Properties):
    """v2: line items and an explicit currency, so revenue can be checked and split."""

    order_id: _Str
    revenue: _Money
    currency: _Currency
    items: Annotated[list[OrderItem], msgspec.Meta(min_length=1)]
    discount: _Money = 0.0


class PaymentFailed(Properties):
    order_id: _Name | None = None
    reason: _Name | None = None


# ── fulfilment ───────────────────────────────────────────────────────────────
class OrderShipped(Properties):
    order_id: _Str
    carrier: _Name | None = None


class DeliveryUpdated(Properties):
    order_id: _Str
    status: DeliveryStatus


class PackageOpened(Properties):
    order_id: _Str


# ── post-purchase ────────────────────────────────────────────────────────────
class ReturnRequested(Properties):
    order_id: _Str
    reason: _Name | None = None


class ReturnCompleted(Properties):
    order_id: _Str
    refund: _Money | None = None


class ReviewSubmitted(Properties):
    rating: Annotated[int, msgspec.Meta(ge=1, le=5)]
    text: _Text | None = None
    sku: _Name | None = None


# ── service ──────────────────────────────────────────────────────────────────
class SupportTicketOpened(Properties):
    ticket_id: _Str
    channel: TicketChannel
    order_id: _Name | None = None
    topic: _Name | None = None


class SupportMessage(Properties):
    ticket_id: _Str
    author: Literal["agent", "customer", "bot"]


class SupportTicketResolved(Properties):
    ticket_id: _Str


class SupportTicketReopened(Properties):
    ticket_id: _Str


# ── feedback ─────────────────────────────────────────────────────────────────
class Rates(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What a survey answer rates: a touchpoint, a ticket or an order."""

    event_id: _Name | None = None
    ticket_id: _Name | None = None
    order_id: _Name | None = None


class SurveyResponse(Properties):
    """NPS 0 to 10, CSAT 1 to 5, CES 1 to 7 (the range is checked by :func:`check_properties`)."""

    survey: Literal["nps", "csat", "ces"]
    score: int
    rates: Rates | None = None
    comment: _Text | None = None


SURVEY_RANGES: Final = {"nps": (0, 10), "csat": (1, 5), "ces": (1, 7)}


# ── lifecycle ────────────────────────────────────────────────────────────────
class Identify(Properties):
    traits: dict[str, Any] = {}


class AccountCreated(Properties):
    pass


class SubscriptionCancelled(Properties):
    reason: _Name | None = None
    plan: _Name | None = None


#: (type, version) → properties model. Every type of the taxonomy has a v1.
SCHEMAS: Final[dict[tuple[str, int], type[Properties]]] = {
    ("ad_impression", 1): AdImpression,
    ("ad_click", 1): AdClick,
    ("email_opened", 1): EmailOpened,
    ("email_clicked", 1): EmailClicked,
    ("social_engaged", 1): SocialEngaged,
    ("page_view", 1): PageView,
    ("product_viewed", 1): ProductViewed,
    ("cart_updated", 1): CartUpdated,
    ("checkout_started", 1): CheckoutStarted,
    ("order_placed", 1): OrderPlaced,
    ("order_placed", 2): OrderPlacedV2,
    ("payment_failed", 1): PaymentFailed,
    ("order_shipped", 1): OrderShipped,
    ("delivery_updated", 1): DeliveryUpdated,
    ("package_opened", 1): PackageOpened,
    ("return_requested", 1): ReturnRequested,
    ("return_completed", 1): ReturnCompleted,
    ("review_submitted", 1): ReviewSubmitted,
    ("support_ticket_opened", 1): SupportTicketOpened,
    ("support_message", 1): SupportMessage,
    ("support_ticket_resolved", 1): SupportTicketResolved,
    ("support_ticket_reopened", 1): SupportTicketReopened,
    ("survey_response", 1): SurveyResponse,
    ("identify", 1): Identify,
    ("account_created", 1): AccountCreated,
    ("subscription_cancelled", 1): SubscriptionCancelled,
}

LATEST: Final[dict[str, int]] = {}
for _type, _version in SCHEMAS:
    LATEST[_type] = max(LATEST.get(_type, 0), _version)


def properties_model(type_: str, version: int) -> type[Properties] | None:
    return SCHEMAS.get((type_, version))
