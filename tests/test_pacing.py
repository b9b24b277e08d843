"""The feed keeps to its rate, and after a stall makes up at most CATCH_UP_SECONDS of it."""

from __future__ import annotations

import pytest

from taskhub.cli import main
from taskhub.demo.pacing import CATCH_UP_SECONDS, Pacer


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _send(pacer: Pacer, clock: FakeClock, count: int) -> list[float]:
    """The delays of `count` messages, each sent when its delay is over."""
    delays = []
    for _ in range(count):
        delay = pacer.delay()
        clock.now += delay
        delays.append(delay)
    return delays


def test_messages_are_spaced_at_the_rate() -> None:
    clock = FakeClock()
    pacer = Pacer(4, clock=clock)
    assert _send(pacer, clock, 5) == [0.0, 0.25, 0.25, 0.25, 0.25]


def test_after_a_stall_the_feed_catches_up_at_most_one_second_then_keeps_the_rate() -> None:
    clock = FakeClock()
    pacer = Pacer(4, clock=clock)
    _send(pacer, clock, 3)
    clock.now += 60  # a broker outage
    delays = _send(pacer, clock, 10)
    burst = 4 * CATCH_UP_SECONDS + 1  # the second's worth it makes up, and the one due now
    assert delays[: int(burst)] == [0.0] * int(burst)
    assert delays[int(burst) :] == [0.25] * (10 - int(burst))


def test_rate_zero_is_unpaced() -> None:
    clock = FakeClock()
    assert _send(Pacer(0, clock=clock), clock, 3) == [0.0, 0.0, 0.0]


def test_the_feed_refuses_a_negative_rate_in_one_line() -> None:
    with pytest.raises(SystemExit, match=r"--rate, --venues and --zipf must not be negative"):
        main(["feed", "--rate", "-1"])
