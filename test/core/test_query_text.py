"""Query text rules: mode inference for "auto" and the event text matchers embed."""
import pytest

from dispider_ros.core.query_text import event_text, infer_mode


@pytest.mark.parametrize("text, mode", [
    ("Tell me when the person picks up the red cup", "match"),
    ("please LET ME KNOW IF the dog leaves the room", "match"),
    ("Alert me as soon as a car arrives", "match"),
    ("Notify me when the kettle boils.", "match"),
    ("Guide me through what the cook is doing", "boundary"),
    ("Narrate the match", "boundary"),
    ("Describe the assembly step by step", "boundary"),
    ("Keep me updated on the build", "boundary"),
    ("What is on the table now?", "now"),
    ("When did the man leave?", "now"),  # past question: no cue
    ("Describe the scene", "now"),
    ("Keep me updated and tell me when it rains", "match"),  # match rule comes first
])
def test_infer_mode_table(text, mode):
    assert infer_mode(text) == mode


@pytest.mark.parametrize("text, expected", [
    ("Tell me when the person picks up the red cup!", "the person picks up the red cup"),
    ("Please alert me if someone enters the room.", "someone enters the room"),
    ("let me know once, the light turns green?", "the light turns green"),
    ("What is on the table?", "What is on the table"),
    ("Tell me when", "Tell me when"),
])
def test_event_text(text, expected):
    assert event_text(text) == expected
