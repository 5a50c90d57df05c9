"""Checks the gateway against the official Python server SDK (PyPI `pusher`).

Usage: python3 sdk_compat.py <port> [app_id] [app_key] [app_secret]

A plain WebSocket client (PyPI `websockets`) subscribes; the SDK triggers events, which must
arrive intact, and queries channels with channels_info() / channel_info(). Those GET requests
carry body_md5 of the empty body, which the gateway must accept. Prints progress on stderr and,
on success, exactly one line `ok N checks` on stdout. Any deviation exits 1 with a message.
Missing packages exit 3.
"""

import json
import random
import re
import signal
import string
import sys
import time

try:
    import pusher
    from websockets.sync.client import connect
except ImportError as error:
    print(
        f"missing Python package ({error}): run scripts/test, or "
        "`pip install -r gateway/tests/py/requirements.txt`",
        file=sys.stderr,
    )
    sys.exit(3)

TOTAL_TIMEOUT_S = 60
WAIT_S = 5.0
QUIET_S = 0.4

checks = 0


def fail(message):
    print(f"FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def check(condition, what, detail=""):
    global checks
    if not condition:
        fail(f"{what}: {detail}" if detail else what)
    checks += 1
    print(f"  ok {checks} - {what}", file=sys.stderr)


def check_equal(actual, expected, what):
    check(actual == expected, what, f"expected {expected!r}, got {actual!r}")


def on_alarm(_signum, _frame):
    fail(f"timed out after {TOTAL_TIMEOUT_S} s (last passed check: #{checks})")


class Client:
    """A Pusher protocol client over a plain WebSocket."""

    def __init__(self, ws):
        self.ws = ws
        established = self.next_event()
        check_equal(established.get("event"), "pusher:connection_established", "connection_established first")
        data = json.loads(established["data"])
        self.socket_id = data.get("socket_id")

    def send(self, event, data):
        self.ws.send(json.dumps({"event": event, "data": data}))

    def next_event(self, timeout=WAIT_S, what="an event"):
        try:
            text = self.ws.recv(timeout=timeout)
        except TimeoutError:
            fail(f"timed out after {timeout} s waiting for {what}")
        except Exception as error:  # noqa: BLE001
            fail(f"connection ended while waiting for {what}: {error!r}")
        if not isinstance(text, str):
            fail(f"expected a text frame while waiting for {what}, got {text!r}")
        return json.loads(text)

    def expect_nothing(self, what):
        """Nothing more arrives for a short while (no duplicates, no stray events)."""
        try:
            text = self.ws.recv(timeout=QUIET_S)
        except TimeoutError:
            check(True, what)
            return
        fail(f"{what}: got an unexpected message {text!r}")

    def subscribe(self, channel, auth=None):
        data = {"channel": channel}
        if auth is not None:
            data["auth"] = auth
        self.send("pusher:subscribe", data)
        answer = self.next_event(what=f"the answer to subscribing to {channel}")
        check(
            answer.get("event") == "pusher_internal:subscription_succeeded" and answer.get("channel") == channel,
            f"subscribed to {channel}",
            f"got {answer!r}",
        )

    def expect_event(self, channel, event, data_string, what):
        message = self.next_event(what=what)
        check_equal(
            (message.get("channel"), message.get("event")),
            (channel, event),
            f"{what}: arrives on the right channel with the right name",
        )
        check_equal(message.get("data"), data_string, f"{what}: data intact")


def main():
    args = sys.argv[1:]
    if not args or not args[0].isdigit():
        print("usage: python3 sdk_compat.py <port> [app_id] [app_key] [app_secret]", file=sys.stderr)
        sys.exit(2)
    port = int(args[0])
    app_id = args[1] if len(args) > 1 else "1"
    key = args[2] if len(args) > 2 else "app-key"
    secret = args[3] if len(args) > 3 else "app-secret"

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(TOTAL_TIMEOUT_S)

    sdk = pusher.Pusher(app_id=app_id, key=key, secret=secret, host="127.0.0.1", port=port, ssl=False)

    def call(what, function, *call_args, **kwargs):
        try:
            answer = function(*call_args, **kwargs)
        except Exception as error:  # noqa: BLE001 - SDK raises on any non-200 answer
            fail(f"{what}: the SDK call failed: {type(error).__name__}: {error}")
        check(isinstance(answer, dict), f"{what} answers a JSON object", repr(answer))
        return answer

    run = "".join(random.choices(string.ascii_lowercase + string.digits, k=6))

    url = f"ws://127.0.0.1:{port}/app/{key}?protocol=7&client=python&version=1.0"
    try:
        ws = connect(url, open_timeout=WAIT_S, close_timeout=1)
    except Exception as error:  # noqa: BLE001 - any failure to connect is a failed check
        fail(f"websocket connection to {url} failed: {error!r}")
    with ws:
        run_checks(sdk, Client(ws), run, call)

    signal.alarm(0)
    print(f"ok {checks} checks")


def run_checks(sdk, client, run, call):
    public = f"py-public-{run}"
    private = f"private-py-{run}"

    check(
        isinstance(client.socket_id, str) and re.fullmatch(r"\d+\.\d+", client.socket_id) is not None,
        "socket_id looks like \\d+.\\d+",
        repr(client.socket_id),
    )
    client.subscribe(public)
    auth = sdk.authenticate(channel=private, socket_id=client.socket_id)
    check(isinstance(auth, dict) and isinstance(auth.get("auth"), str), "the SDK signs a channel authorization", repr(auth))
    client.subscribe(private, auth["auth"])

    # trigger: one channel, a dict (the SDK JSON-encodes it), then a string, then two channels.
    payload = {"text": 'quotes " and \\ backslash, unicode é ✓ 🚀', "n": [1, 2.5, None, True]}
    call("trigger to the public channel", sdk.trigger, public, "py-event", payload)
    message = client.next_event(what="the triggered event")
    check_equal((message.get("channel"), message.get("event")), (public, "py-event"), "triggered event arrives")
    check_equal(json.loads(message.get("data")), payload, "triggered event data intact")
    client.expect_nothing("triggered event arrives once")

    call("trigger a string to the private channel", sdk.trigger, private, "py-string", "plain text")
    client.expect_event(private, "py-string", "plain text", "string event on the private channel")
    client.expect_nothing("string event arrives once")

    call("trigger to two channels", sdk.trigger, [public, private], "py-multi", "both")
    got = sorted((m.get("channel"), m.get("event"), m.get("data")) for m in (client.next_event(), client.next_event()))
    check_equal(got, sorted([(public, "py-multi", "both"), (private, "py-multi", "both")]), "trigger to two channels arrives on both")
    client.expect_nothing("trigger to two channels arrives once per channel")

    # socket_id excludes the subscriber; the next event shows the gateway handled it.
    call("trigger excluding the subscriber", sdk.trigger, public, "py-excluded", "no", socket_id=client.socket_id)
    call("trigger after the excluded one", sdk.trigger, public, "py-after", "yes")
    client.expect_event(public, "py-after", "yes", "the excluded event is skipped, the next one arrives")

    call(
        "trigger_batch",
        sdk.trigger_batch,
        [
            {"channel": public, "name": "py-batch-1", "data": "one"},
            {"channel": private, "name": "py-batch-2", "data": "two"},
        ],
    )
    got = sorted((m.get("channel"), m.get("event"), m.get("data")) for m in (client.next_event(), client.next_event()))
    check_equal(got, sorted([(public, "py-batch-1", "one"), (private, "py-batch-2", "two")]), "trigger_batch events arrive")

    # GET requests: the SDK signs them with body_md5 of the empty body.
    listed = call("channels_info()", sdk.channels_info)
    channels = listed.get("channels")
    check(isinstance(channels, dict), "channels_info() has a channels object", repr(listed))
    check(public in channels and private in channels, "channels_info() lists both channels", repr(listed))

    counted = call("channels_info(attributes=[subscription_count])", sdk.channels_info, attributes=["subscription_count"])
    check_equal(
        {name: counted.get("channels", {}).get(name) for name in (public, private)},
        {public: {"subscription_count": 1}, private: {"subscription_count": 1}},
        "channels_info() counts one subscription each",
    )

    filtered = call("channels_info(prefix_filter=private-)", sdk.channels_info, prefix_filter="private-")
    check(
        private in filtered.get("channels", {}) and public not in filtered.get("channels", {}),
        "channels_info(prefix_filter) filters",
        repr(filtered),
    )

    info = call("channel_info(private)", sdk.channel_info, private, ["subscription_count"])
    check_equal(info.get("occupied"), True, "channel_info() says occupied")
    check_equal(info.get("subscription_count"), 1, "channel_info() counts one subscription")

    empty = call("channel_info(unused)", sdk.channel_info, f"py-nobody-{run}")
    check_equal(empty.get("occupied"), False, "channel_info() of an unused channel says not occupied")

    client.ws.close()
    deadline = time.monotonic() + WAIT_S
    while True:
        remaining = [name for name in (public, private) if name in sdk.channels_info().get("channels", {})]
        if not remaining or time.monotonic() > deadline:
            check_equal(remaining, [], "channels are vacated after the client disconnects")
            break
        time.sleep(0.05)


if __name__ == "__main__":
    main()
