"""What `candorlm prepare` asks of privacy: the scrubber and the canary planter as corpus filters.

`candorlm.prepare` is the data layer and knows nothing of privacy; it takes a sequence of
filters (each turns a corpus into a corpus, and may write a report into the data directory).
The CLI builds them here from its --scrub and --canaries options:

    prepare(sources, out, filters=prepare_filters(scrub=True, canaries=4, val_fraction=0.05))

Imports of the scrubber and the canaries wait until a filter is asked for, so `prepare` without
them needs nothing of the privacy extra.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

CorpusFilterFactory = Callable[[Any], Any]


def _scrubbed(operator: str, workers: int | None) -> CorpusFilterFactory:
    from candorlm.privacy.scrub import ScrubbedCorpus

    return lambda corpus: ScrubbedCorpus(corpus, operator, workers=workers)


def _canaries(count: int, repeats: str | Sequence[int], fmt: str | None, seed: int,
              val_fraction: float) -> CorpusFilterFactory:
    from candorlm.privacy.canaries import DEFAULT_FORMAT, CanaryCorpus, make_canaries, parse_repeats

    planted = make_canaries(count, parse_repeats(repeats), fmt or DEFAULT_FORMAT, seed, val_fraction)

    return lambda corpus: CanaryCorpus(corpus, planted)


def prepare_filters(scrub: bool = False, scrub_operator: str = "placeholder", canaries: int = 0,
                    canary_repeats: str | Sequence[int] = "10", canary_format: str | None = None,
                    canary_seed: int = 0, *, workers: int | None = None,
                    val_fraction: float = 0.05) -> list[CorpusFilterFactory]:
    """The filters for `candorlm.prepare.prepare(..., filters=...)`: scrubbing first, then the
    canaries (so the scrubber never touches a canary).

    Args:
        scrub: Replace personal data with typed placeholders on the way in (see `candorlm scrub`);
            report in DATA_DIR/scrub_report.json.
        scrub_operator: With scrub: mask, placeholder (<PHONE>), pseudonym (consistent fakes) or drop.
        canaries: Plant N random secrets per repeat count, for `candorlm audit`.
        canary_repeats: How many copies of each canary: a count or a list, e.g. 1,10,100.
        canary_format: Canary text, # for each random digit (default: 我的银行卡号是####-####).
        canary_seed: Seed of the canaries' random digits.
        workers: Processes for scrubbing (default: all cores).
        val_fraction: The data directory's validation share (canaries go to the training part).
    """
    filters: list[CorpusFilterFactory] = []
    if scrub:
        filters.append(_scrubbed(scrub_operator, workers))
    if canaries:
        filters.append(_canaries(canaries, canary_repeats, canary_format, canary_seed, val_fraction))
    return filters
