"""An on_response sink for ReactionEngine tests: records events, waits with timeouts."""
import threading


class Collector:
    def __init__(self, timeout: float = 30.0):
        self.events = []
        self.cond = threading.Condition()
        self.timeout = timeout

    def __call__(self, event):
        with self.cond:
            self.events.append(event)
            self.cond.notify_all()

    def finals(self):
        with self.cond:
            return [e for e in self.events if e.final]

    def chunks(self, response_id):
        with self.cond:
            return [e for e in self.events if not e.final and e.response_id == response_id]

    def wait_final(self, response_id, timeout=None):
        """The final event of response_id (fails after the timeout)."""
        timeout = timeout or self.timeout
        with self.cond:
            ok = self.cond.wait_for(lambda: any(e.final and e.response_id == response_id
                                                for e in self.events), timeout)
            assert ok, f"no final response {response_id} within {timeout} s"
            return next(e for e in self.events if e.final and e.response_id == response_id)

    def wait_finals(self, count, timeout=None):
        """Wait until at least count finals arrived (fails after the timeout)."""
        timeout = timeout or self.timeout
        with self.cond:
            assert self.cond.wait_for(lambda: sum(e.final for e in self.events) >= count, timeout), \
                f"{sum(e.final for e in self.events)} of {count} finals after {timeout} s"
