"""The one error an import raises when a pipeline cannot be served exactly."""

from __future__ import annotations


class ImportRefused(ValueError):
    """The pipeline has something the service cannot serve exactly; ``field`` names it
    (``unet.in_channels``, ``sizes``, ``scheduler.timestep_spacing``, ...)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
