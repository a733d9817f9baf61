"""The audit log (``audit.py``), the capped denials, and the sidecar's wrong-token limiter
(``sidecar/ratelimit.py``).
"""

import json
import time

from jhproxy_routes.audit import AuditLog, DenialLog
from jhproxy_routes.sidecar.ratelimit import BadTokenLimiter


def test_bad_token_limiter_counts_per_client_and_route_and_forgets():
    limiter = BadTokenLimiter(limit=3, window=0.3, max_entries=2)
    assert [limiter.failed("c1", "/r") for _ in range(3)] == [False, False, True]
    assert limiter.retry_after("c1", "/r") >= 1
    assert limiter.retry_after("c2", "/r") == 0 and limiter.retry_after("c1", "/other") == 0
    time.sleep(0.35)
    assert limiter.retry_after("c1", "/r") == 0  # the window has passed
    for client in ("a", "b", "c"):  # bounded: the oldest entry goes
        limiter.failed(client, "/r")
    assert len(limiter._failures) == 2 and ("a", "/r") not in limiter._failures
    assert BadTokenLimiter(limit=0).failed("c", "/r") is False  # 0: no limit


def test_denials_are_capped_per_client(tmp_path):
    audit = AuditLog(str(tmp_path / "audit.jsonl"))
    denials = DenialLog(audit, per_minute=3)
    for i in range(10):
        denials.record("1.2.3.4", reason="no credentials", path="/p" * 1000)
    denials.record("5.6.7.8", reason="no credentials")
    denials._clients["1.2.3.4"][0] -= 1  # as if a minute had passed
    denials.record("1.2.3.4", reason="no credentials")
    entries = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [(e["event"], e["client"]) for e in entries] == [
        *[("denied", "1.2.3.4")] * 3,
        ("denied", "5.6.7.8"),
        ("denials suppressed", "1.2.3.4"),
        ("denied", "1.2.3.4"),
    ]
    assert entries[4]["count"] == 7


def test_audit_log_lines_are_whole_json(tmp_path):
    path = tmp_path / "audit.jsonl"
    first, second = AuditLog(str(path)), AuditLog(str(path))  # hub and sidecar: one file
    first.record("denied", reason="wrong token", path='/p\n{"forged": 1}')
    second.record("settings changed", user="ann")
    lines = path.read_text().splitlines()
    assert [json.loads(line)["event"] for line in lines] == ["denied", "settings changed"]
    assert json.loads(lines[0])["path"] == '/p\n{"forged": 1}'  # a newline cannot start a line of its own
    AuditLog("").record("denied")  # off: nothing, no error
