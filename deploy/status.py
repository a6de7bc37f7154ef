"""`journey status`: each component, whether it is healthy, and what it holds, at a glance.

What runs comes from ``<data dir>/stack.json`` when `journey up` wrote one (every
worker of ``--workers N``), else from the settings (one worker and one collector at
their configured ports: a deployment's own). Each is probed the way `journey up`
probes it; the consumer group's lag per topic comes from the broker itself (committed
offsets against log ends), so it holds however many workers there are. The group as a
whole is checked too: every input partition the broker has must be owned by exactly
one worker (a worker that is ready says so of itself, not of the group).
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.stack import STATE_FILE
from schemas.settings import Settings

__all__ = ["Component", "Group", "components", "coverage", "format_status", "group_state",
           "group_whole", "probe"]


@dataclass
class Component:
    name: str
    role: str
    address: str
    health: str
    pid: int | None = None
    state: str = "?"
    detail: str = ""
    #: A worker's input partitions (``topic:partition``), as its /readyz lists them;
    #: None: not a worker, or it did not say.
    inputs: list[str] | None = None

    @property
    def healthy(self) -> bool:
        return self.state in ("up", "ready")


def components(settings: Settings) -> list[Component]:
    """What `journey up` runs (its stack.json), or what the settings point at."""
    path = Path(settings.data_dir).resolve() / STATE_FILE
    if path.exists():
        recorded = json.loads(path.read_text())
        return [Component(c["name"], c["role"], c["address"], c["health"], c.get("pid"))
                for c in recorded["components"]]
    host, port = settings.broker_host_port
    ch_host, ch_port = settings.clickhouse_host_port
    http = settings.clickhouse_http_port
    worker = f"http://127.0.0.1:{settings.worker_web_port}"
    collector = f"http://{settings.collector_host}:{settings.collector_port}"
    return [
        Component("broker", "broker", f"kafka://{host}:{port}", f"tcp://{host}:{port}"),
        Component("clickhouse", "clickhouse", f"clickhouse://{ch_host}:{ch_port}",
                  f"http://{ch_host}:{http}/ping"),
        Component("worker", "worker", f"{worker}/metrics", f"{worker}/readyz"),
        Component("collector", "collector", f"{collector}/v1/batch", f"{collector}/healthz"),
    ]


def probe(component: Component, timeout: float = 2.0) -> Component:
    """Fill in ``state`` and ``detail``."""
    if component.health.startswith("tcp://"):
        host, port = component.health[6:].rsplit(":", 1)
        try:
            socket.create_connection((host, int(port)), timeout=timeout).close()
            component.state = "up"
        except OSError as exc:
            component.state, component.detail = "down", str(exc)
        return component
    status, body = _get(component.health, timeout)
    if component.role == "worker":
        answer = _json(body)
        if status == 0:
            component.state, component.detail = "down", body
            return component
        component.state = "ready" if status == 200 else "not ready"
        partitions = answer.get("partitions", "?")
        component.inputs = answer.get("inputs")
        _, metrics = _get(component.address, timeout)  # its /metrics
        lag = _sum(metrics, "journey_consumer_lag")
        rebuilt = _sum(metrics, "journey_state_rebuilds_total")
        component.detail = (f"{partitions} partitions assigned, lag {lag:,.0f}"
                            + (f", {rebuilt:.0f} state rebuilds" if rebuilt else "")
                            + ("" if status == 200 else " (rebalancing or recovering)"))
    elif component.role == "collector":
        component.state = "up" if status == 200 else "down"
        if status == 200:
            base = component.health.rsplit("/", 1)[0]
            _, metrics = _get(f"{base}/metrics", timeout)
            accepted = _sum(metrics, 'journey_collector_events_total{outcome="accepted"')
            rejected = _sum(metrics, 'journey_collector_events_total{outcome="rejected"')
            component.detail = f"{accepted:,.0f} events accepted, {rejected:,.0f} rejected"
        else:
            component.detail = body
    else:
        component.state = "up" if status == 200 else "down"
        if status != 200:
            component.detail = body
    return component


@dataclass
class Group:
    """What the broker says of the worker group."""

    #: Records not yet committed, per input topic.
    lag: dict[str, int] = field(default_factory=dict)
    #: Every partition of every input topic (``topic:partition``).
    partitions: list[str] = field(default_factory=list)


def group_state(settings: Settings, timeout: float = 5.0) -> Group | str:
    """The worker group's lag per input topic and its input partitions, or why not."""
    from kafka import KafkaAdminClient, KafkaConsumer
    from kafka.errors import KafkaError

    try:
        admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers,
                                 request_timeout_ms=int(timeout * 1000))
    except (KafkaError, OSError) as exc:
        return f"broker unreachable ({exc})"
    try:
        committed = admin.list_group_offsets(settings.app_id)[settings.app_id]
        inputs = {settings.touchpoints_topic, settings.by_device_topic,
                  settings.journey_events_topic, settings.cx_partials_topic,
                  settings.dead_letter_topic}
        consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers)
        try:
            tps = [tp for tp in _partitions(consumer, inputs)]
            ends = consumer.end_offsets(tps) if tps else {}
        finally:
            consumer.close()
        group = Group(partitions=[f"{tp.topic}:{tp.partition}" for tp in tps])
        for tp, end in ends.items():
            meta = committed.get(tp)
            done = meta.offset if meta is not None and meta.offset >= 0 else 0
            group.lag[tp.topic] = group.lag.get(tp.topic, 0) + max(0, end - done)
        return group
    except (KafkaError, KeyError) as exc:
        return f"could not read the group's offsets ({exc!r})"
    finally:
        admin.close()


def coverage(found: list[Component], partitions: list[str]) -> tuple[list[str], list[str]]:
    """(input partitions no worker owns, those two or more workers say they own), from
    what each worker that answered listed; ([], []) when none listed its inputs."""
    said = [c.inputs for c in found if c.inputs is not None]
    if not said:
        return [], []
    owned = Counter(tp for inputs in said for tp in inputs)
    return ([tp for tp in partitions if not owned[tp]],
            sorted(tp for tp, n in owned.items() if n > 1))


def _partitions(consumer: Any, topics: set[str]) -> list[Any]:
    from kafka import TopicPartition

    out = []
    for topic in sorted(topics):
        for partition in sorted(consumer.partitions_for_topic(topic) or ()):
            out.append(TopicPartition(topic, partition))
    return out


def format_status(found: list[Component], group: Group | str, prefix: str) -> str:
    """A table, one line per component, then the group's lag by topic, and whether its
    workers own every input partition once."""
    width = max(len("component"), *(len(c.name) for c in found))
    addresses = [c.address.split(" (", 1)[0] for c in found]  # `journey up` adds notes
    room = max(len(a) for a in addresses)
    lines = [f"{'component':<{width}}  {'state':<9}  {'address':<{room}}  detail"]
    for c, address in zip(found, addresses, strict=True):
        mark = "" if c.healthy else "  <-"
        lines.append(f"{c.name:<{width}}  {c.state:<9}  {address:<{room}}  {c.detail}{mark}"
                     .rstrip())
    if isinstance(group, str):
        lines.append(f"\nconsumer lag: {group}")
        return "\n".join(lines)
    total = sum(group.lag.values())
    per_topic = ", ".join(f"{topic.removeprefix(prefix + '.')} {n:,}"
                          for topic, n in sorted(group.lag.items()))
    lines.append(f"\nconsumer lag: {total:,} records ({per_topic or 'no topics yet'})")
    workers = sum(c.inputs is not None for c in found)
    if workers:
        missing, twice = coverage(found, group.partitions)
        if not missing and not twice:
            lines.append(f"partitions: each of the {len(group.partitions)} input partitions "
                         f"owned by one of {workers} worker{'s' * (workers > 1)}")
        if missing:
            lines.append(f"partitions: {len(missing)} of {len(group.partitions)} input "
                         f"partitions owned by no worker: {_names(missing, prefix)}  <-")
        if twice:
            lines.append(f"partitions: owned by more than one worker: {_names(twice, prefix)}  <-")
    return "\n".join(lines)


def group_whole(found: list[Component], group: Group | str) -> bool:
    """Whether the workers that listed their inputs own every input partition once
    (True when the broker or the workers could not say)."""
    if isinstance(group, str):
        return True
    missing, twice = coverage(found, group.partitions)
    return not missing and not twice


def _names(tps: list[str], prefix: str) -> str:
    """``touchpoints[3], journey-events[0]``: at most 8 named."""
    shown = [f"{tp.removeprefix(prefix + '.').replace(':', '[')}]" for tp in tps[:8]]
    return ", ".join(shown) + (f" and {len(tps) - 8} more" if len(tps) > 8 else "")


def _get(url: str, timeout: float) -> tuple[int, str]:
    """(status, body); status 0 when nothing answered, with the reason as the body."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except OSError as exc:
        return 0, f"no answer ({getattr(exc, 'reason', exc)})"


def _json(body: str) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _sum(metrics: str, prefix: str) -> float:
    """The sum of every sample whose line starts with ``prefix`` (a name, or a name and
    the start of its labels)."""
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith(prefix) and not line.startswith("#"):
            rest = line[len(prefix):]
            if rest[:1] in (" ", "{", ",") or prefix.endswith('"'):
                try:
                    total += float(line.rsplit(" ", 1)[1])
                except ValueError:
                    continue
    return total
