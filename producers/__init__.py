"""What emits touchpoints: the Python SDK and the journey simulator."""

from producers.sdk import JourneyClient, PublishError

__all__ = ["JourneyClient", "PublishError"]
