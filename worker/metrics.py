"""The worker's Prometheus metrics, in a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["WorkerMetrics"]

_METHODS = {"GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS", "PATCH"}


class WorkerMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("p2pcache_requests", "HTTP requests", ["method", "status"], registry=r)
        self.bytes_served = Counter("p2pcache_bytes_served", "Object bytes sent to clients", registry=r)
        self.chunk_bytes_served = Counter(
            "p2pcache_peer_bytes_served", "Chunk bytes sent to peers", registry=r)
        self.hits = Counter("p2pcache_cache_hits", "Chunks of readers' reads found on this worker's disk",
                            registry=r)
        self.misses = Counter("p2pcache_cache_misses", "Chunks of readers' reads not on this worker's disk "
                              "(read from another worker or S3)", registry=r)
        self.origin_bytes = Counter("p2pcache_origin_bytes", "Bytes read from S3", registry=r)
        self.origin_requests = Counter("p2pcache_origin_requests", "Ranged GETs sent to S3", registry=r)
        self.origin_retries = Counter(
            "p2pcache_origin_retries", "S3 requests retried, by cause", ["cause"], registry=r)
        self.origin_breaker_open = Gauge(
            "p2pcache_origin_breaker_open", "1 while S3 is not asked (circuit breaker open)", registry=r)
        self.store_errors = Counter("p2pcache_store_errors", "Cache disk failures", registry=r)
        self.corrupt_chunks = Counter(
            "p2pcache_corrupt_chunks", "Cached chunks that failed their checksums (dropped)", registry=r)
        self.corrupt_transfers = Counter(
            "p2pcache_corrupt_transfers", "Peer transfers whose bytes failed the sender's checksums",
            registry=r)
        self.passthrough_bytes = Counter(
            "p2pcache_passthrough_bytes", "Bytes streamed around a failing cache disk", registry=r)
        self.peer_bytes = Counter("p2pcache_peer_bytes", "Chunk bytes received from other workers "
                                  "(reads through this worker, copies, handoffs)", registry=r)
        self.peer_failures = Counter("p2pcache_peer_failures", "Peer reads that failed over", registry=r)
        self.aborted = Counter("p2pcache_responses_aborted", "Responses cut after headers", registry=r)
        self.stalled = Counter("p2pcache_stalled_readers_cut",
                               "Answers cut because their reader took nothing for --send-timeout", registry=r)
        self.fills_in_flight = Gauge("p2pcache_fills_in_flight", "Chunk fills running", registry=r)
        self.store_bytes = Gauge("p2pcache_store_bytes", "Bytes of chunks on disk", registry=r)
        self.listing_cache_bytes = Gauge(
            "p2pcache_listing_cache_bytes", "Bytes of listing answers cached (32 MiB at most)", registry=r)
        self.store_capacity = Gauge("p2pcache_store_capacity_bytes", "Store capacity", registry=r)
        self.ring_epoch = Gauge("p2pcache_ring_epoch", "Epoch of the ring in use", registry=r)
        self.handoff_bytes = Counter(
            "p2pcache_handoff_bytes", "Bytes of chunks copied from their earlier holders", registry=r)
        self.handoff_chunks = Counter(
            "p2pcache_handoff_chunks", "Chunks copied from their earlier holders", registry=r)
        self.rebalance_backlog = Gauge(
            "p2pcache_rebalance_backlog_chunks", "Chunks here still to hand to their owners", registry=r)
        self.rebalance_sent = Counter(
            "p2pcache_rebalance_chunks", "Chunks handed to their owners by the rebalancer", registry=r)
        self.handoff_pins_over_limit = Counter(
            "p2pcache_handoff_pins_over_limit", "Pinned chunks handed to this worker that it took but did not "
            "keep: keeping them would have passed its keep limit", registry=r)
        self.superseded_pins = Counter(
            "p2pcache_superseded_pins", "Kept chunks released because S3 has a newer version of their object "
            "(no read asks for them: they are evicted as any other chunk)", registry=r)
        self.pinned_bytes = Gauge(
            "p2pcache_pinned_bytes", "Bytes of chunks a pinned preload keeps from eviction", registry=r)
        self.serve_processes = Gauge(
            "p2pcache_serve_processes", "Serving processes running (0: this process serves)", registry=r)
        self.serve_restarts = Counter(
            "p2pcache_serve_process_restarts", "Serving processes that died and were started again",
            registry=r)
        self.process_requests = Counter(
            "p2pcache_process_requests", "Requests a serving process answered from chunk files "
            "(the others were passed to the coordinator)", ["process"], registry=r)
        self.fast_requests = Counter(
            "p2pcache_fast_path_requests", "Reads serving processes answered on their HTTP fast path "
            "(without aiohttp; worker/fastpath.py)", registry=r)
        self.object_changes = Counter(
            "p2pcache_object_changes", "Objects a HEAD found changed in S3 (another version, deleted or "
            "created); serving processes then ask for every identity again", registry=r)
        self._request_children: dict[tuple[str, int], object] = {}

    def count_request(self, method: str, status: int, n: int = 1) -> None:
        """`requests.labels(...).inc()` without the label lookup on every request."""
        child = self._request_children.get((method, status))
        if child is None:
            method = method if method in _METHODS else "OTHER"  # bounded label values
            child = self._request_children[(method, status)] = self.requests.labels(method, str(status))
        child.inc(n)
