"""Webhooks (issue 15): the parts of signed, durable delivery that hold no I/O.

- ``signing``: Standard Webhooks signatures (``webhook-id``, ``webhook-timestamp``,
  ``webhook-signature``), several secrets at once during a rotation;
- ``addresses``: which receivers may be called (no loopback, private, link-local or metadata
  addresses unless an operator allows them), checked on the resolved addresses;
- ``backoff``: when a failed delivery is tried again, and when it is given up.

The delivery itself (a Redis stream of deliveries, the delivering process, metrics) builds on
these; it is not wired into the gateway or the workers yet.
"""
