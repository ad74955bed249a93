"""The owners before a master's restart: the newest ring its workers report while it collects heartbeats."""

from __future__ import annotations

from p2pcache.ring import Owning, carried
from p2pcache.ringreport import RingReport

__all__ = ["Earlier", "newer"]


def newer(report: RingReport, at: float, than: RingReport, than_at: float) -> bool:
    """Whether `report`, received by its worker at `at`, is a later ring than `than`, received at `than_at`.

    Epochs count within one master only (a restarted master has a new id and starts again at 1:
    p2pcache/ring.py), so rings of two masters are ordered by when their workers received them,
    on this master's clock (`at` is now less the report's age): the later master's came last.
    """
    if report.master_id == than.master_id:
        return report.epoch > than.epoch
    return at > than_at


class Earlier:
    """The newest ring reported to the master `master_id`, from another master with the same
    placement parameters (under others, its owners held other chunks)."""

    def __init__(self, master_id: str, parameters: tuple[int, int, int, float]) -> None:
        self._master_id, self._parameters = master_id, parameters
        self.report: RingReport | None = None
        self._at = 0.0

    def heard(self, report: RingReport, at: float) -> bool:
        """Take `report`, received by its worker at `at`, if it is the newest; True if it was."""
        if report.master_id == self._master_id or report.parameters != self._parameters:
            return False
        if self.report is not None and not newer(report, at, self.report, self._at):
            return False
        self.report, self._at = report, at
        return True

    def history(self, owning: Owning) -> tuple[Owning, ...]:
        """The history of a first ring owned by `owning`: the reported ring's, as if it went on to this one."""
        if self.report is None:
            return ()
        before, *history = self.report.memberships
        return carried(before, tuple(history), owning)
