"""The event bus: each subscriber is handed the kinds of event and the state changes it
named, in the order they were published, and an event a subscriber publishes reaches
everyone after the one that caused it."""

from __future__ import annotations

from pmd_init.model.states import ProgramState
from pmd_init.supervisor.events import (
    Event,
    EventBus,
    HealthEvent,
    ReadyEvent,
    SignalEvent,
    StateEvent,
)

S = ProgramState


def change(old: ProgramState, new: ProgramState) -> StateEvent:
    return StateEvent(program_id=1, program="p", instance="p", port=None, from_state=old,
                      to_state=new, pid=7, exit_code=None, time=1.0)


READY = ReadyEvent(program_id=1, program="p", instance="p", port=None, pid=7, time=1.0,
                   via="running")
VERDICT = HealthEvent(program_id=1, program="p", instance="p", port=None,
                      from_status="unknown", to_status="healthy", time=1.0)


def test_each_subscriber_gets_what_it_named_in_order() -> None:
    bus = EventBus()
    everything: list[Event] = []
    states: list[Event] = []
    running: list[Event] = []
    ready: list[Event] = []
    bus.subscribe(everything.append)
    bus.subscribe(states.append, (StateEvent,))
    bus.subscribe(running.append, (StateEvent,), entering=(S.RUNNING,), leaving=(S.RUNNING,))
    bus.subscribe(ready.append, (ReadyEvent,))
    published: list[Event] = [change(S.STOPPED, S.STARTING), change(S.STARTING, S.RUNNING),
                              READY, VERDICT, change(S.RUNNING, S.EXITED),
                              change(S.EXITED, S.STARTING)]
    for event in published:
        bus.publish(event)
    assert everything == published
    assert states == [e for e in published if isinstance(e, StateEvent)]
    assert running == [published[1], published[4]]  # entering RUNNING, leaving it
    assert ready == [READY]
    assert bus.wants(ReadyEvent) and bus.wants(HealthEvent) and bus.wants(StateEvent)


def test_a_kind_nobody_takes_is_not_wanted_and_unsubscribing_stops_delivery() -> None:
    bus = EventBus()
    got: list[Event] = []
    unsubscribe = bus.subscribe(got.append, (StateEvent, SignalEvent))
    assert bus.wants(SignalEvent) and not bus.wants(ReadyEvent)
    bus.publish(READY)  # nobody takes it: nothing happens
    bus.publish(change(S.STARTING, S.RUNNING))
    unsubscribe()
    bus.publish(change(S.RUNNING, S.EXITED))
    assert got == [change(S.STARTING, S.RUNNING)]
    assert not bus.wants(SignalEvent)


def test_an_event_published_by_a_subscriber_follows_the_one_that_caused_it() -> None:
    bus = EventBus()
    first: list[Event] = []
    last: list[Event] = []

    def react(event: Event) -> None:
        first.append(event)
        if isinstance(event, StateEvent) and event.to_state == S.RUNNING:
            bus.publish(READY)

    bus.subscribe(react)
    bus.subscribe(last.append)
    bus.publish(change(S.STARTING, S.RUNNING))
    assert first == last == [change(S.STARTING, S.RUNNING), READY]


def test_a_failing_subscriber_does_not_stop_the_others() -> None:
    bus = EventBus()
    got: list[Event] = []

    def broken(event: Event) -> None:
        raise RuntimeError("broken")

    bus.subscribe(broken)
    bus.subscribe(got.append)
    bus.publish(VERDICT)
    assert got == [VERDICT]
