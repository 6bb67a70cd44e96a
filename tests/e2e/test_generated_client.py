"""The API is usable by a client no one here wrote: openapi-python-client generates
a Python package from the running server's /openapi.json, and that package drives a
share and a purchase (log in, circulate, start a checkout, poll each command's
outcome); the buyer pays on the (simulated) payment system's page it points to."""

from __future__ import annotations

import importlib
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

from deploy.localstack import free_port
from tests.e2e.certificates import cert_id, setup
from tests.e2e.http import wait_for


def generate(port: int, folder: Path):
    spec = folder / "openapi.json"
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/openapi.json", timeout=10) as r:
        spec.write_bytes(r.read())
    cli = Path(sys.executable).with_name("openapi-python-client")
    assert cli.exists(), f"{cli}: run `make install`"
    out = subprocess.run([str(cli), "generate", "--path", str(spec), "--meta", "none",
                          "--output-path", str(folder / "commission_client")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Unable to process" not in out.stdout, out.stdout  # nothing left out
    sys.path.insert(0, str(folder))
    return importlib.import_module("commission_client")


def test_a_generated_client_shares_and_buys(pipeline, tmp_path):
    port, paysim_port = free_port(), free_port()
    shared = {"CHECKOUT_TOKEN": f"checkout-{uuid.uuid4().hex}"}
    pipeline.start_all()
    pipeline.start("readmodel")
    pipeline.start("paysim", PAYSIM_PORT=str(paysim_port), **shared)
    pipeline.start("api", API_PORT=str(port), API_OPS_PORT=str(free_port()),
                   PAYMENT_SYSTEM_URL=f"http://127.0.0.1:{paysim_port}", **shared)
    cid = cert_id("client-lamp")
    pipeline.send(*setup(cid, int(time.time() * 1000), name="Lamp", price_minor=4_000,
                         budget_minor=1_000, attached_minor=100))
    wait_for(port, f"/certificates/{cid}", lambda b: b["status"] == "posted", pipeline=pipeline)

    client_pkg = generate(port, tmp_path)
    models = importlib.import_module("commission_client.models")

    class api:  # noqa: N801 - the generated package's endpoint modules, by name
        pass

    for name in ("log_in", "circulate", "start_checkout", "get_command_outcome",
                 "get_certificate"):
        setattr(api, name, importlib.import_module(f"commission_client.api.default.{name}"))
    base = f"http://127.0.0.1:{port}"

    def logged_in(account: str):
        token = api.log_in.sync(client=client_pkg.Client(base_url=base),
                                body=models.Login(account_id=account,
                                                  password=f"demo-{account}")).token
        return client_pkg.AuthenticatedClient(base_url=base, token=token)

    def outcome(client, command_id: str) -> dict:
        deadline = time.monotonic() + 60
        while True:
            answer = api.get_command_outcome.sync(id=command_id, client=client)
            body = answer.to_dict()
            if body["status"] != "pending":
                return body
            assert time.monotonic() < deadline, f"{command_id} still pending"
            time.sleep(0.3)

    alice = logged_in("alice")
    shared = api.circulate.sync(id=cid, client=alice, body=models.CirculateBody())
    assert outcome(alice, shared.command_ids[0])["status"] == "accepted"
    carol = logged_in("carol")
    checkout = api.start_checkout.sync(id=cid, client=carol)
    assert checkout.checkout_url.startswith(f"http://127.0.0.1:{paysim_port}/checkouts/")
    # carol pays on the payment page; the payment system reports the capture
    pay = urllib.request.Request(f"{checkout.checkout_url}/pay", method="POST",
                                 data=urllib.parse.urlencode({"card": "4242424242424242"})
                                 .encode())
    with urllib.request.urlopen(pay, timeout=30) as r:  # redirected back to the page
        assert r.url.startswith(f"{base}/page/certificates/{cid}?checkout=")
    wait_for(port, f"/certificates/{cid}", lambda b: b["status"] == "purchased",
             pipeline=pipeline)
    again = api.circulate.sync(id=cid, client=alice, body=models.CirculateBody())
    refused = outcome(alice, again.command_ids[0])
    assert (refused["status"], refused["reason"]) == ("rejected", "certificate_purchased")
    wait_for(port, f"/certificates/{cid}", lambda b: b["status"] == "purchased")
    certificate = api.get_certificate.sync(id=cid, client=client_pkg.Client(base_url=base))
    assert (certificate.status, certificate.holder) == ("purchased", "alice")
    pipeline.assert_running()
