"""Which lost writes the drills count as in flight at the fault, and which as real losses."""

from __future__ import annotations

from drills.figures import IN_FLIGHT_S, REPLY_DELIVERY_S, in_flight_at_fault

FAULT = 100.0
LANDED = 100.002  # the fault's action returned


def test_a_write_acknowledged_just_before_the_fault_was_in_flight():
    assert in_flight_at_fault((1, FAULT - 0.05, FAULT - 0.01), FAULT, LANDED)


def test_a_write_acknowledged_well_before_the_fault_is_a_real_loss():
    assert not in_flight_at_fault((1, FAULT - IN_FLIGHT_S - 0.1, FAULT - IN_FLIGHT_S - 0.05), FAULT, LANDED)


def test_a_reply_to_a_request_sent_before_the_fault_read_just_after_it_was_in_flight():
    # Seen in CI: a blocking writer read its reply 13 ms after the SIGSTOP.
    assert in_flight_at_fault((382, FAULT - 0.001, FAULT + 0.013), FAULT, LANDED)


def test_a_request_sent_after_the_fault_landed_is_a_real_loss_however_soon_it_was_answered():
    # Only another server (or a cut-off primary still running) can have answered it.
    assert not in_flight_at_fault((1, LANDED + 0.001, LANDED + 0.002), FAULT, LANDED)


def test_a_request_sent_before_the_fault_and_answered_by_a_resumed_zombie_is_a_real_loss():
    assert not in_flight_at_fault((1, FAULT - 0.001, LANDED + REPLY_DELIVERY_S + 3.0), FAULT, LANDED)
