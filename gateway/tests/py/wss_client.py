"""A Python `websockets` client over TLS, trusting a CA given on the command line.

usage: wss_client.py <wss url> <ca file> <channel>
Prints `subscribed` once subscribed, then the first event on the channel, then exits 0.
"""

import asyncio
import json
import ssl
import sys

import websockets


async def main() -> None:
    url, ca_file, channel = sys.argv[1:4]
    context = ssl.create_default_context(cafile=ca_file)
    async with websockets.connect(url, ssl=context, open_timeout=10) as socket:
        established = json.loads(await asyncio.wait_for(socket.recv(), 10))
        assert established["event"] == "pusher:connection_established", established
        await socket.send(json.dumps({"event": "pusher:subscribe", "data": {"channel": channel}}))
        answer = json.loads(await asyncio.wait_for(socket.recv(), 10))
        assert answer["event"] == "pusher_internal:subscription_succeeded", answer
        print("subscribed", flush=True)
        event = json.loads(await asyncio.wait_for(socket.recv(), 20))
        print(json.dumps(event), flush=True)


asyncio.run(main())
