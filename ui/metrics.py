"""What `/metrics` tells Prometheus: turn latency, the explanations waiting, fallbacks and refusals.

One registry per service (not the process-wide default), so that two services in one process (tests) keep apart.
Nothing in it is data-dependent beyond counts: no text, no session.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.reply_seconds = Histogram("candor_reply_seconds", "Time from a message's arrival to its logged reply",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.turns = Counter("candor_turns", "Chat turns answered", ["fallback"], registry=r)
        self.refused = Counter("candor_refused_messages", "Messages the guard refused to read", registry=r)
        self.explained = Counter("candor_explanations", "Explanations stored", ["when"], registry=r)
        self.dropped = Counter("candor_explanations_dropped",
                               "Turns not queued for explanation because the queue was full (explained on reading)",
                               registry=r)
        self.pending = Gauge("candor_explanations_pending", "Turns waiting for their explanation", registry=r)
        self.in_flight = Gauge("candor_turns_in_flight", "Turns being read, classified or answered now", registry=r)
        self.rate_limited = Counter("candor_rate_limited_requests", "REST requests refused with 429", registry=r)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
