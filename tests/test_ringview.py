"""A loader's ring follower: an answer that is no ring is an unreachable master, never its end."""

from __future__ import annotations

import logging

from conftest import wait_for
from faultproxy import FaultProxy, on_nth
from p2pcache import Client


async def test_a_page_in_place_of_the_ring_is_logged_and_the_client_follows_the_next_ring(cluster_factory, caplog):
    """A misconfigured ingress answered one /ring with 200 and HTML: the follower died of msgpack's
    ExtraData, the client never learned another ring, and close() raised it (leaving its session open)."""
    cluster = await cluster_factory(2)
    proxy = await FaultProxy(cluster.master.url).start()
    proxy.by_request = on_nth(2, "page", prefix="/ring")  # the follower's first long-poll, right after start
    try:
        client = await Client(proxy.url).start()
        epoch = client.placement.ring.epoch
        try:
            await wait_for(lambda: proxy.injected["page"], what="the page to be sent")
            await cluster.add_worker()
            await wait_for(lambda: "w2" in client.placement.workers, what="the client to take the next ring")
        finally:
            await client.close()  # raised ExtraData
        assert client._session.closed
    finally:
        await proxy.stop()
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "follow the ring" in r.getMessage()]
    assert warned == [f"could not follow the ring, keeping epoch {epoch}, asking again every 1 s: {proxy.url} did not "
                      f"answer as a p2pcache master (it answered 200 with no ring: not msgpack: '<html><body>"
                      f"<h1>Welcome</h1>the ingress has no such service</body></html>'): is it the master's URL?"]
