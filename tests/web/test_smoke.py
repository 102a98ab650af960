from consentgate.testing.harness import Harness


async def test_health(gw: Harness) -> None:
    status, body = await gw.api("GET", "/healthz", token=None)
    assert (status, body) == (200, {"status": "ok"})
