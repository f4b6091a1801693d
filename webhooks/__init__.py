"""Webhooks (issue 15): signed, durable delivery of job events to the clients' receivers.

Pure parts:
- ``signing``: Standard Webhooks signatures (``webhook-id``, ``webhook-timestamp``,
  ``webhook-signature``), several secrets at once during a rotation;
- ``secrets``: which secrets sign which API key's deliveries (``DIFFQ_WEBHOOK_SECRETS``);
- ``addresses``: which receivers may be called (no loopback, private, link-local or metadata
  addresses unless an operator allows them), checked on the resolved addresses;
- ``backoff``: when a failed delivery is tried again, and when it is given up.

The delivering process (``diffq webhooks run``): ``deliverer`` (claims, attempts, settles),
``config``, ``metrics`` and ``main``. Deliveries are queued by the status changes themselves
(``diffq.store.records``) and claimed under leases (``diffq.store.deliveries``).
"""
