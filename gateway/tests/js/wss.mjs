// pusher-js with forceTLS against the gateway's TLS port, and the official `pusher` server SDK
// publishing over HTTPS to the same port. The CA comes from NODE_EXTRA_CA_CERTS.
//
// usage: node wss.mjs <tls port>; prints `ok N checks` on success, exits non-zero otherwise.

import PusherClient from "pusher-js";
import PusherServer from "pusher";

const port = Number(process.argv[2]);
if (process.env.COMPAT_DEBUG) PusherClient.logToConsole = true;
let checks = 0;

function fail(message) {
  console.error(`FAILED: ${message}`);
  process.exit(1);
}
function check(condition, what) {
  if (!condition) fail(what);
  checks += 1;
}
setTimeout(() => fail("timed out after 30 s"), 30_000).unref();

const client = new PusherClient("app-key", {
  wsHost: "localhost",
  wssPort: port,
  forceTLS: true,
  enabledTransports: ["ws"],
  cluster: "local",
  channelAuthorization: {
    customHandler: ({ socketId, channelName }, callback) =>
      callback(null, server.authorizeChannel(socketId, channelName)),
  },
});
const server = new PusherServer({
  appId: "1",
  key: "app-key",
  secret: "app-secret",
  host: "localhost",
  port: String(port),
  useTLS: true,
});

const connected = new Promise((resolve) => client.connection.bind("connected", resolve));
await connected;
check(/^\d+\.\d+$/.test(client.connection.socket_id), "socket id over wss");

for (const name of ["news", "private-news"]) {
  const channel = client.subscribe(name);
  await new Promise((resolve, reject) => {
    channel.bind("pusher:subscription_succeeded", resolve);
    channel.bind("pusher:subscription_error", reject);
  });
  check(true, `subscribed to ${name} over wss`);
  const received = new Promise((resolve) => channel.bind("story", resolve));
  const response = await server.trigger(name, "story", { over: "https", channel: name });
  check(response.status === 200, `trigger over https answered ${response.status}`);
  const data = await received;
  check(data.over === "https" && data.channel === name, `event on ${name} arrived intact`);
}

client.disconnect();
console.log(`ok ${checks} checks`);
process.exit(0);
