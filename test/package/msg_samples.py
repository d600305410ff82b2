"""One fully populated instance of every dispider_ros message."""
from builtin_interfaces.msg import Time


def samples():
    from dispider_ros.msg import FrameFeature, Query, Response, Trigger

    query = Query(query_id="q-1", text="Tell me when the flower has opened ✿", mode=Query.MODE_MATCH,
                  cameras=["front", "wrist"], max_responses=3, expiry_sec=60.5, threshold=0.25,
                  cancel=False)
    query.header.stamp = Time(sec=12, nanosec=500)
    query.header.frame_id = "front_optical"
    trigger = Trigger(trigger_id="t-7", query_id="q-1", query_text=query.text, camera_id="front",
                      policy="match", score=0.875, frame_index=41, clip_index=3,
                      clip_start=Time(sec=10, nanosec=1), clip_end=Time(sec=12, nanosec=500))
    trigger.header = query.header
    response = Response(response_id="r-9", trigger_id="t-7", query_id="q-1", camera_id="front",
                        text="The flower is open.", final=True, sequence=4,
                        revises_response_id="r-8", ttft_sec=0.125, token_count=17,
                        error_code=Response.PREEMPTED, error="preempted by trigger t-8",
                        prompt_tokens=3585, reused_tokens=3396, prefill_tokens=189,
                        frames_in_prompt=80, history_span_sec=39.5)
    response.header = query.header
    feature = FrameFeature(camera_id="front", frame_index=41, clip_index=3, clip_boundary=True,
                           clip_start=Time(sec=10, nanosec=1), clip_similarity=0.5, encoder="tiny:siglip",
                           embedding=[0.6, -0.8, 0.0, 1e-3])
    feature.header = query.header
    return [query, trigger, response, feature]
