"""Progress lines at most every few seconds, and step times."""
import time

from q2_aam.core.progress import Steps, Ticker


def test_a_ticker_speaks_once_its_interval_has_passed_or_when_forced():
    said = []
    ticker = Ticker(said.append, every=0.05)
    ticker("too soon")
    ticker(lambda: "forced", force=True)
    time.sleep(0.06)
    ticker(lambda: "due")
    ticker("too soon again")
    assert said == ["forced", "due"]
    Ticker(None, every=0)("nobody listens")  # no log: nothing to do, no error


def test_steps_add_up_in_order_and_say_the_long_ones():
    said = []
    steps = Steps(said.append)
    with steps("first"):
        pass
    with steps("second"):
        time.sleep(1.01)
    with steps("first"):
        pass
    steps.add("third", 2.5)
    assert list(steps.seconds) == ["first", "second", "third"]
    assert steps.seconds["second"] >= 1 and steps.seconds["third"] == 2.5
    assert len(said) == 1 and said[0].startswith("Second: 1.0")
