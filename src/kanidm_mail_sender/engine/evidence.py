"""Pure evidence across destinations: when refusals that one reply would leave to one
destination are really about us, the relay or our account.

Two rules, each written so its reasons can be logged:

- **Throttling on evidence.** The same transient refusal (same shape once addresses and ids
  are removed) for ``throttle_destinations`` distinct destinations in at least two domains
  within ``window`` seconds is the relay limiting us, whatever stage it answered: slow down,
  spend no attempt. One recipient refused again and again is never evidence.
- **The burn guard.** Permanent refusals of the mail itself (after DATA, not an address or
  mailbox status X.1.x/X.2.x) with the same shape for ``burn_destinations`` distinct
  destinations in a row, with no acceptance between, are a relay-wide incident (our sender
  not allowed, a quota reached): pause, spend no attempt, and put back to deferred the
  destinations the burst already rejected. Until a mail is accepted, the same refusal again
  is part of the incident.

Times are passed in (monotonic seconds); :class:`Evidence` keeps a bounded history.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from uuid import UUID

from kanidm_mail_sender.core.replies import Refusal, Stage, Verdict

__all__ = ["Evidence", "EvidenceRules", "Judgement", "Seen", "judge"]


@dataclass(frozen=True, slots=True)
class EvidenceRules:
    """How much evidence turns one destination's refusal into a relay-wide one."""

    window: float = 60.0
    throttle_destinations: int = 3
    burn_destinations: int = 3
    history: int = 64


@dataclass(frozen=True, slots=True)
class Seen:
    """One refusal as the evidence keeps it: where, what, and the attempts spent before."""

    at: float
    message_id: UUID
    destination: str
    shape: str
    verdict: Verdict
    attempts_before: int
    acceptances: int = 0  # mails accepted before this refusal: a run ends at an acceptance


@dataclass(frozen=True, slots=True)
class Judgement:
    """The verdict the evidence gives, why, and (for a burst) whom to put back."""

    verdict: Verdict
    reason: str
    burst: tuple[Seen, ...] = ()

    @property
    def escalated(self) -> bool:
        """Whether the evidence made a destination's refusal relay-wide (only then is there
        a reason)."""
        return bool(self.reason)


def _domain(destination: str) -> str:
    return destination.rpartition("@")[2].lower()


def _burns(refusal: Refusal) -> bool:
    """Whether the refusal is of the kind the burn guard watches."""
    return (
        refusal.verdict is Verdict.REJECT
        and refusal.stage is Stage.DATA
        and not (refusal.per_address)
    )


def judge(
    recent: Sequence[Seen],
    new: Seen,
    refusal: Refusal,
    *,
    rules: EvidenceRules,
    incident_shape: str | None = None,
) -> Judgement:
    """The verdict for ``refusal`` (seen as ``new``) given the refusals since the last
    acceptance, oldest first; ``incident_shape``: the shape of an open burst incident."""
    verdict = refusal.verdict
    if verdict not in (Verdict.DEFER, Verdict.REJECT):
        return Judgement(verdict, "")
    if incident_shape is not None and new.shape == incident_shape:
        return Judgement(
            Verdict.RELAY_DOWN, "the same refusal as the open incident, for another mail"
        )
    if _burns(refusal):
        run: list[Seen] = []
        for seen in reversed(recent):
            if seen.acceptances != new.acceptances:
                break  # a mail went through since
            if seen.verdict is not Verdict.REJECT:
                continue  # deferrals between do not break a run of rejections
            if seen.shape != new.shape:
                break
            run.append(seen)
        run.reverse()
        destinations = {seen.destination for seen in run} | {new.destination}
        if len(destinations) >= rules.burn_destinations:
            return Judgement(
                Verdict.RELAY_DOWN,
                f"{len(destinations)} distinct destinations in a row refused with the same "
                "reply after DATA, no acceptance between: the refusal is about us",
                burst=tuple(run),
            )
        return Judgement(verdict, "")
    if verdict is Verdict.DEFER:
        alike = [
            seen
            for seen in recent
            if seen.verdict is Verdict.DEFER
            and seen.shape == new.shape
            and new.at - seen.at <= rules.window
        ]
        destinations = {seen.destination for seen in alike} | {new.destination}
        domains = {_domain(d) for d in destinations}
        if len(destinations) >= rules.throttle_destinations and len(domains) >= 2:
            return Judgement(
                Verdict.THROTTLE,
                f"{len(destinations)} distinct destinations in {len(domains)} domains deferred "
                f"with the same reply within {rules.window:g} s: the relay limits us",
            )
    return Judgement(verdict, "")


class Evidence:
    """The latest refusals (bounded), the acceptances between them, and any open burst
    incident."""

    def __init__(self, rules: EvidenceRules | None = None) -> None:
        self.rules = rules or EvidenceRules()
        self._recent: deque[Seen] = deque(maxlen=self.rules.history)
        self._acceptances = 0
        self.incident_shape: str | None = None

    def refused(
        self,
        now: float,
        message_id: UUID,
        destination: str,
        refusal: Refusal,
        attempts_before: int,
    ) -> Judgement:
        """Judge one refusal and remember it."""
        new = Seen(
            now,
            message_id,
            destination,
            refusal.shape,
            refusal.verdict,
            attempts_before,
            self._acceptances,
        )
        judgement = judge(
            self._recent, new, refusal, rules=self.rules, incident_shape=self.incident_shape
        )
        if judgement.escalated and judgement.verdict is Verdict.RELAY_DOWN:  # burst, or within
            self.incident_shape = new.shape
        else:
            self._recent.append(new)
        return judgement

    def accepted(self) -> None:
        """A mail went through: runs of rejections end, and so does any burst incident."""
        self._acceptances += 1
        self.incident_shape = None
