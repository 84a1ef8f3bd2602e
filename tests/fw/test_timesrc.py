"""dosiscore.timesrc.StepFilter: which source counts as a second, independent witness.

The filter's basic rules (small steps, one source held, a second source confirming, trusted
time) are tested in test_clock.py; here the `origin` of an answer: two NTP servers are two
witnesses, the same server twice is one. Runs on CPython and MicroPython (tests/fw/mprun.py).
"""

from dosiscore.timesrc import StepFilter

T = 1835481600
H2 = 7200


def test_two_ntp_servers_agreeing_confirm_a_big_step():
    f = StepFilter()
    assert f.offer(T, T + H2, 0, "ntp", origin="192.0.2.1") is None
    assert f.offer(T + 1, T + 1 + H2 + 4, 1, "ntp", origin="192.0.2.2") == T + 1 + H2 + 4
    assert f.pending is None


def test_the_same_ntp_server_twice_does_not_confirm():
    f = StepFilter()
    for i in range(4):
        assert f.offer(T + i, T + i + H2, i, "ntp", origin="192.0.2.1") is None
    # ... and its latest answer is the one waiting: a second server may still confirm it.
    assert f.offer(T + 10, T + 10 + H2, 10, "ntp", origin="192.0.2.9") == T + 10 + H2


def test_two_ntp_servers_disagreeing_do_not_confirm():
    f = StepFilter()
    assert f.offer(T, T + H2, 0, "ntp", origin="192.0.2.1") is None
    assert f.offer(T, T + H2 + 6, 1, "ntp", origin="192.0.2.2") is None  # 6 s apart
    assert f.offer(T, T - H2, 2, "ntp", origin="192.0.2.3") is None
    # the first answer still waits for its witness
    assert f.offer(T, T + H2 - 5, 3, "ntp", origin="192.0.2.4") == T + H2 - 5


def test_without_origin_ntp_answers_are_one_source_as_before():
    f = StepFilter()
    assert f.offer(T, T + H2, 0, "ntp") is None
    assert f.offer(T, T + H2, 1, "ntp") is None
    assert f.offer(T, T + H2, 2, "ntp", origin=None) is None


def test_same_origin_name_under_another_source_is_independent():
    # The identity is the pair: "host" answers are not the NTP server's, whatever the origin.
    f = StepFilter()
    assert f.offer(T, T + H2, 0, "ntp", origin="192.0.2.1") is None
    assert f.offer(T, T + H2 + 1, 1, "host", origin="192.0.2.1") == T + H2 + 1


def test_a_stale_answer_from_the_same_server_is_replaced_not_kept():
    f = StepFilter()
    assert f.offer(T, T + H2, 0, "ntp", origin="192.0.2.1") is None
    # over an hour later the same server says something else: that is now the waiting answer
    assert f.offer(T + 4000, T + 4000 - H2, 4000, "ntp", origin="192.0.2.1") is None
    assert f.pending is not None and f.pending[0] == -H2
    assert f.offer(T + 4001, T + 4001 - H2, 4001, "ntp", origin="192.0.2.2") == T + 4001 - H2


def test_small_steps_and_trusted_time_ignore_the_origin():
    f = StepFilter()
    assert f.offer(T, T + 100, 0, "ntp", origin="192.0.2.1") == T + 100
    assert f.offer(T, T + H2, 1, "ntp", origin="192.0.2.1") is None
    assert f.offer(T, T - H2, 2, "nurse", True) == T - H2
    assert f.pending is None
