"""The pipeline carries meaning: with the trained tiny SigLIP (tiny:siglip_trained), the
zero-shot question "Tell me when the <object> appears." fires when that photograph comes on
screen in a seeded cut stream, through the composition root with the shipped decision
settings -- and the same check fails when the pipeline is deliberately broken.
Protocol and scoring: dispider_ros.eval.semantic."""
import pytest
import torch

from dispider_ros import compose, settings
from dispider_ros.eval import semantic

pytestmark = pytest.mark.slow

SEEDS = range(12)  # 12 streams x 16 questions; ~75 first appearances
SECONDS = 30.0


@pytest.fixture(scope="module")
def composition():
    torch.set_num_threads(1)
    node_settings = {node: settings.node_settings(node) for node in settings.NODES}
    for node in ("perception_node", "decision_node"):
        node_settings[node]["vision_model"] = "tiny:siglip_trained"
    node_settings["reaction_node"]["max_new_tokens"] = 1  # answers are not what is tested here
    built = compose.build_graph(node_settings, lambda event: None)
    built.period_sec = 1.0 / node_settings["perception_node"]["sample_fps"]
    yield built
    built.close()


def _report(name, figures):
    print(f"\n{name}: precision {figures['precision']:.3f} ({figures['correct_triggers']}/"
          f"{figures['triggers']} triggers), recall {figures['recall']:.3f} ({figures['detected']}/"
          f"{figures['appearances']} first appearances), F1 {figures['f1']:.3f} over "
          f"{figures['streams']} streams, {figures['questions']} questions; missed "
          f"{figures['missed']}, wrong triggers for {figures['wrong_trigger_scenes']}")


def test_tell_me_when_fires_within_one_sampled_period_of_the_photo_and_not_before(composition):
    figures = semantic.evaluate(composition, SEEDS, SECONDS, composition.period_sec)
    _report("trained tiny SigLIP", figures)
    assert figures["appearances"] >= 60
    assert figures["precision"] >= 0.9 and figures["recall"] >= 0.9, figures


@pytest.mark.parametrize("sabotage", semantic.SABOTAGE)
def test_the_same_check_fails_on_a_broken_pipeline(composition, sabotage):
    figures = semantic.evaluate(composition, SEEDS[:6], SECONDS, composition.period_sec,
                                sabotage=sabotage)
    _report(f"broken ({sabotage})", figures)
    assert figures["appearances"] >= 30
    assert figures["precision"] < 0.5 and figures["recall"] < 0.5, figures
