"""Bag and video input: rosbag2 sqlite3/MCAP round trips, ROS 1 bags, bags without images."""
import numpy as np
import pytest

from conftest import shared_file
from dispider_ros.eval import bagio
from dispider_ros.footage import video_frames

FLOWER = "videos/mdn_cc0_flower.mp4"
SIZE = (160, 120)


@pytest.fixture(scope="module")
def flower_frames():
    return list(video_frames(shared_file(FLOWER), max_seconds=1.0, size=SIZE))


@pytest.mark.parametrize("storage", bagio.STORAGES)
def test_video_to_bag_round_trip(tmp_path, flower_frames, storage):
    bag = bagio.write_bag(flower_frames, tmp_path / f"flower_{storage}", storage=storage,
                          start_stamp=1_700_000_000.0, frame_id="cam")
    with bagio.open_source(bag) as source:
        assert source.storage == storage
        assert source.topics() == [bagio.TopicInfo(bagio.VIDEO_TOPIC, bagio.RAW, len(flower_frames))]
        assert source.start_stamp() == pytest.approx(1_700_000_000.0)
        frames = list(source.frames())
    assert len(frames) == len(flower_frames)
    for frame, (t, rgb) in zip(frames, flower_frames):
        assert frame.topic == bagio.VIDEO_TOPIC and frame.kind == "raw" and frame.frame_id == "cam"
        assert frame.stamp == pytest.approx(1_700_000_000.0 + t, abs=1e-6)
        assert frame.log_time == pytest.approx(frame.stamp, abs=1e-6)
        np.testing.assert_array_equal(frame.rgb(), rgb)  # lossless for raw images


def test_single_file_and_compressed_topic(tmp_path, flower_frames):
    bag = bagio.write_bag(flower_frames[:5], tmp_path / "jpeg", storage="mcap",
                          topic="/cam/image/compressed", compressed=True)
    mcap_file = next(bag.glob("*.mcap"))
    with bagio.open_source(mcap_file) as source:  # the storage file alone, no metadata.yaml
        (topic,) = source.select()
        assert (topic.topic, topic.kind, topic.count) == ("/cam/image/compressed", "compressed", 5)
        first = next(iter(source.frames()))
    rgb = first.rgb()
    assert rgb.shape == (SIZE[1], SIZE[0], 3)
    assert np.abs(rgb.astype(int) - flower_frames[0][1].astype(int)).mean() < 6  # JPEG q90


@pytest.mark.parametrize("name", ["rosbag2_talker_sqlite3", "rosbag2_talker_mcap"])
def test_bag_without_images_names_the_topics_found(name):
    folder = shared_file(f"bags/{name}/metadata.yaml").parent
    with bagio.open_source(folder) as source:
        assert source.image_topics() == []
        with pytest.raises(bagio.NoImagesError) as error:
            source.select()
    message = str(error.value)
    assert "no sensor_msgs/msg/Image or CompressedImage topic" in message
    for topic in ("/topic (std_msgs/msg/String, 10 msgs)", "/rosout (rcl_interfaces/msg/Log, 10 msgs)",
                  "/parameter_events"):
        assert topic in message


def test_unknown_camera_topic_is_named(tmp_path, flower_frames):
    bag = bagio.write_bag(flower_frames[:2], tmp_path / "bag")
    with bagio.open_source(bag) as source, pytest.raises(bagio.NoImagesError, match="/front"):
        source.select(["/front/image_raw"])


def test_ros1_bag_with_compressed_images():
    path = shared_file("bags/ubiquity_aruco_images.bag")
    with bagio.open_source(path) as source:
        assert source.storage == "ros1"
        (topic,) = source.select()
        assert topic.topic == "/raspicam_node/image/compressed" and topic.kind == "compressed"
        (frame,) = list(source.frames())
    assert frame.rgb().shape == (960, 1280, 3)
    assert frame.stamp == pytest.approx(1491682360.8, abs=1.0)  # the header stamp


def test_video_file_is_one_camera_from_zero():
    with bagio.open_source(shared_file(FLOWER), video_size=SIZE) as source:
        assert source.storage == "video"
        (topic,) = source.select()
        assert (topic.topic, topic.count) == (bagio.VIDEO_TOPIC, 150)
        frames = [f for _, f in zip(range(31), source.frames())]
    assert frames[0].stamp == 0.0
    assert frames[30].stamp == pytest.approx(30 / 29.97, abs=1e-3)
    assert frames[0].rgb().shape == (SIZE[1], SIZE[0], 3)


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError):
        bagio.open_source(tmp_path / "missing")
    (tmp_path / "not_a_bag").mkdir()
    with pytest.raises((ValueError, FileNotFoundError)):
        bagio.open_source(tmp_path / "not_a_bag")
    with pytest.raises(ValueError, match="storage"):
        bagio.write_bag([], tmp_path / "x", storage="zip")


def _frames_then_fail(frames, after):
    yield from frames[:after]
    raise RuntimeError("decoder died")


def test_existing_out_is_refused_and_kept(tmp_path, flower_frames):
    bag = bagio.write_bag(flower_frames[:2], tmp_path / "bag", storage="mcap")
    before = sorted(p.name for p in bag.iterdir())
    with pytest.raises(FileExistsError, match="--overwrite"):
        bagio.write_bag(flower_frames[:3], bag, storage="mcap")
    assert sorted(p.name for p in bag.iterdir()) == before
    bagio.write_bag(flower_frames[:3], bag, storage="sqlite3", overwrite=True)
    with bagio.open_source(bag) as source:
        assert source.storage == "sqlite3" and source.topics()[0].count == 3
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a rosbag2 folder"):
        bagio.write_bag(flower_frames[:1], tmp_path / "notes", overwrite=True)
    assert (tmp_path / "notes" / "todo.txt").read_text() == "mine"


@pytest.mark.parametrize("storage", bagio.STORAGES)
def test_a_failed_write_leaves_nothing_behind(tmp_path, flower_frames, storage):
    with pytest.raises(RuntimeError, match="decoder died"):
        bagio.write_bag(_frames_then_fail(flower_frames, 3), tmp_path / "bag", storage=storage)
    with pytest.raises(ValueError, match="no frames"):
        bagio.write_bag([], tmp_path / "bag", storage=storage)
    assert list(tmp_path.iterdir()) == []
    # replacing: the old bag stays whole when the new one fails
    bagio.write_bag(flower_frames[:2], tmp_path / "bag", storage=storage)
    with pytest.raises(RuntimeError):
        bagio.write_bag(_frames_then_fail(flower_frames, 3), tmp_path / "bag", storage=storage,
                        overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["bag"]
    with bagio.open_source(tmp_path / "bag") as source:
        assert source.topics()[0].count == 2
