"""Unit tests of the pure session core: every decision, no server, no threads."""

from __future__ import annotations

import pytest

from diffusionmaster import protocol
from diffusionmaster.errors import ProtocolError, TaskError
from diffusionmaster.session import SessionCore, item_key


def _image(task: str, image: str, cost: float | None = None) -> protocol.ImageItem:
    return protocol.ImageItem(task_uuid=task, image_uuid=image, cost=cost)


def _images(*items: protocol.ImageItem) -> protocol.ImagesResult:
    return protocol.ImagesResult(images=list(items))


def _core(*tasks: tuple[str, int], session: str | None = "s1") -> SessionCore[str]:
    core: SessionCore[str] = SessionCore()
    if session is not None:
        core.connected(session)
    for task, expected in tasks:
        core.add(task, f"frame {task}", expected, f"owner {task}")
    return core


def test_items_are_routed_to_their_task_and_complete_it() -> None:
    """Items go to the task named by their taskUUID; the last expected one completes it."""
    core = _core(("a", 2), ("b", 1))
    (first, second) = core.receive(_images(_image("a", "i1"), _image("b", "j1")))
    assert (first.entry.owner, first.items, first.complete) == (
        "owner a",
        (_image("a", "i1"),),
        False,
    )
    assert (second.entry.owner, second.complete) == ("owner b", True)
    assert "b" not in core and "a" in core
    (done,) = core.receive(_images(_image("a", "i2")))
    assert done.complete and done.items == (_image("a", "i2"),)
    assert len(core) == 0


def test_repeated_items_are_dropped() -> None:
    """An item seen before (same image UUID) is a repeat and is not delivered again."""
    core = _core(("a", 3))
    core.receive(_images(_image("a", "i1")))
    (delivery,) = core.receive(_images(_image("a", "i1"), _image("a", "i2")))
    assert delivery.items == (_image("a", "i2"),) and not delivery.complete


def test_a_frame_of_only_repeats_delivers_nothing() -> None:
    """A frame that repeats what arrived yields no delivery at all."""
    core = _core(("a", 2))
    core.receive(_images(_image("a", "i1")))
    assert core.receive(_images(_image("a", "i1"))) == []


def test_excess_items_beyond_expected_are_cut() -> None:
    """More distinct items than asked for: only the first ``expected`` are delivered."""
    core = _core(("a", 1))
    (delivery,) = core.receive(_images(_image("a", "i1"), _image("a", "i2")))
    assert delivery.items == (_image("a", "i1"),) and delivery.complete


def test_results_for_unknown_tasks_are_counted_as_unrouted() -> None:
    """A result for no task in flight is dropped and counted."""
    core = _core(("a", 1))
    assert core.receive(_images(_image("zzz", "i1"))) == []
    assert core.unrouted == 1


def test_results_after_completion_are_unrouted() -> None:
    """A completed task is forgotten: a late repeat is not delivered twice."""
    core = _core(("a", 1))
    core.receive(_images(_image("a", "i1")))
    assert core.receive(_images(_image("a", "i1"))) == []
    assert core.unrouted == 1


def test_texts_uploads_and_preprocess_results_are_routed() -> None:
    """Every result shape reaches its task, keyed for repeats by text or new UUID."""
    core = _core(("t", 2), ("u", 1), ("p", 1))
    texts = protocol.TextsResult(texts=[protocol.TextItem("t", "x"), protocol.TextItem("t", "x")])
    (text,) = core.receive(texts)
    assert text.items == (protocol.TextItem("t", "x"),) and not text.complete
    (upload,) = core.receive(protocol.UploadResult("u", "new-u"))
    assert upload.complete
    (pre,) = core.receive(protocol.PreprocessResult("p", "new-p"))
    assert pre.complete


def test_item_key_refuses_other_objects() -> None:
    """Only result items have a key."""
    with pytest.raises(TypeError):
        item_key(protocol.Pong())


def test_task_error_fails_that_task_only() -> None:
    """An error frame with a taskUUID fails that task with a TaskError carrying its ids."""
    core = _core(("a", 1), ("b", 1))
    (delivery,) = core.receive(protocol.ServerError("boom", 7, "a"))
    assert isinstance(delivery.error, TaskError)
    assert (delivery.error.task_uuid, delivery.error.error_id) == ("a", 7)
    assert "a" not in core and "b" in core


def test_error_for_unknown_task_is_unrouted() -> None:
    """An error naming no task in flight fails nothing."""
    core = _core(("a", 1))
    assert core.receive(protocol.ServerError("boom", 7, "nope")) == []
    assert core.unrouted == 1 and "a" in core


def test_connection_error_without_task_fails_nothing() -> None:
    """An error frame without a taskUUID concerns the connection, not a task."""
    core = _core(("a", 1))
    assert core.receive(protocol.ServerError("server busy", 3, None)) == []
    assert "a" in core


def test_invalid_frame_fails_the_tasks_it_names() -> None:
    """A frame that cannot be decoded but names tasks fails them with a ProtocolError."""
    core = _core(("a", 1), ("b", 1), ("c", 1))
    cause = ProtocolError("imageUUID: expected a string")
    deliveries = core.receive(protocol.Invalid(cause, ("a", "b", "gone")))
    assert [d.entry.task_uuid for d in deliveries] == ["a", "b"]
    assert all(
        isinstance(d.error, ProtocolError) and d.error.__cause__ is cause for d in deliveries
    )
    assert "c" in core and core.unrouted == 1


def test_other_events_change_nothing() -> None:
    """Pongs and unknown frames route nothing."""
    core = _core(("a", 1))
    assert core.receive(protocol.Pong()) == []
    assert core.receive(protocol.Unknown("x", {})) == []
    assert "a" in core


def test_add_refuses_a_duplicate_uuid_and_a_bad_count() -> None:
    """A task UUID is registered once; expected must be at least 1."""
    core = _core(("a", 1))
    with pytest.raises(ValueError, match="already in flight"):
        core.add("a", "f", 1, "o")
    with pytest.raises(ValueError, match="expected must be >= 1"):
        core.add("b", "f", 0, "o")


def test_hand_over_marks_sent_once() -> None:
    """A task is handed to the session once; a second hand-over is refused."""
    core = _core(("a", 1))
    (entry,) = core.entries()
    assert core.hand_over(entry) == 1
    assert entry.session == "s1"
    assert core.hand_over(entry) is None


def test_hand_over_without_a_session_or_after_removal_is_refused() -> None:
    """No session yet, or a forgotten task: nothing to send."""
    core = _core(("a", 1), session=None)
    (entry,) = core.entries()
    assert core.hand_over(entry) is None
    core.connected("s1")
    core.remove("a")
    assert core.hand_over(entry) is None


def test_failed_send_marks_unsent_unless_handed_over_again() -> None:
    """A failed send returns the task to unsent, unless a later hand-over superseded it."""
    core = _core(("a", 1))
    (entry,) = core.entries()
    attempt = core.hand_over(entry)
    assert attempt is not None
    assert core.send_failed(entry, attempt) is True
    assert entry.session is None
    second = core.hand_over(entry)
    assert second == 2
    assert core.send_failed(entry, attempt) is False  # the stale attempt
    assert entry.session == "s1"


def test_first_connection_sends_what_waited() -> None:
    """Tasks registered before any session are all sent on the first connection."""
    core = _core(("a", 1), ("b", 1), session=None)
    resume = core.connected("s1")
    assert not resume.resumed and resume.expired == []
    assert [e.task_uuid for e in resume.to_send] == ["a", "b"]
    assert all(e.session == "s1" for e in resume.to_send)


def test_resume_keeps_sent_tasks_and_sends_unsent_ones() -> None:
    """The same session UUID: sent tasks go on waiting; unsent ones are sent now."""
    core = _core(("sent", 1), ("unsent", 1))
    sent, unsent = core.entries()
    core.hand_over(sent)
    resume = core.connected("s1")
    assert resume.resumed and resume.expired == []
    assert resume.to_send == [unsent]
    assert "sent" in core


def test_resume_resends_unanswered_tasks_on_request() -> None:
    """With resend_unanswered, sent tasks that received nothing are sent again."""
    core = _core(("quiet", 2), ("answered", 2))
    quiet, answered = core.entries()
    core.hand_over(quiet)
    core.hand_over(answered)
    core.receive(_images(_image("answered", "i1")))
    resume = core.connected("s1", resend_unanswered=True)
    assert resume.to_send == [quiet]
    assert quiet.attempt == 2


def test_new_session_expires_exactly_the_sent_tasks() -> None:
    """A different session UUID: tasks sent in the old one expire; unsent ones are sent."""
    core = _core(("sent", 1), ("unsent", 1))
    sent, unsent = core.entries()
    core.hand_over(sent)
    resume = core.connected("s2")
    assert not resume.resumed
    assert resume.expired == [sent] and resume.to_send == [unsent]
    assert "sent" not in core and core.session_uuid == "s2"


def test_window_passed_loses_sent_tasks_only() -> None:
    """Past the resume window, sent tasks are lost; unsent ones still wait."""
    core = _core(("sent", 1), ("unsent", 1))
    sent, _ = core.entries()
    core.hand_over(sent)
    assert core.window_passed() == [sent]
    assert "unsent" in core and "sent" not in core


def test_fail_all_forgets_everything() -> None:
    """fail_all returns every task in order and leaves none."""
    core = _core(("a", 1), ("b", 1))
    assert [e.task_uuid for e in core.fail_all()] == ["a", "b"]
    assert len(core) == 0


def test_remove_forgets_a_task() -> None:
    """A removed task's late results are unrouted."""
    core = _core(("a", 1))
    assert core.remove("a") is not None
    assert core.remove("a") is None
    assert core.receive(_images(_image("a", "i"))) == []
