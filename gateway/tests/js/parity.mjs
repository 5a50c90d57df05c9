// Checks what Pusher apps rely on beyond channels and events, with the official libraries:
// pusher-js (the client, in Node) and `pusher` (the Node server SDK).
// - Authorized connections: a client that signs in stays; one that never does is closed with
//   4009 and pusher-js reports it and does not reconnect.
// - Client events within Pusher's limits: data over 10 KiB or a name over 200 characters is
//   refused with pusher:error 4301 naming the channel, which pusher-js hands to the channel's
//   `pusher:error` binding and to the connection's `error`; the sender stays connected.
// - HTTP API errors as the server SDK surfaces them (`RequestError` with `status` and `body`):
//   Pusher's status codes, and bodies that say which check failed.
// - Webhooks to two endpoints, each checked with the SDK's own `webhook().isValid()`: one gets
//   every default kind with an extra header, the other only client events and member_added on
//   `presence-` channels.
//
// The gateway runs with `authorized_connections` on for the app, client events on, a
// `signin_timeout` given as the script's fifth argument (seconds), and two webhook endpoints on
// loopback at the ports given as the sixth and seventh arguments, which this script serves: the
// first with every default kind and the header `X-Team: realtime`, the second with
// `event_types` ["client_event", "member_added"] and `channel_name_starts_with` "presence-".
//
// Usage: node parity.mjs <port> <app_id> <app_key> <app_secret> <signin_timeout> <hook_port> <filtered_hook_port>
// Prints progress on stderr and, on success, exactly one line `ok N checks` on stdout.
// Set COMPAT_DEBUG=1 to see pusher-js's own log.

import { createServer } from "node:http";
import PusherClient from "pusher-js";
import {
  check,
  checkEqual,
  clients,
  fail,
  finish,
  received,
  sleep,
  start,
  subscribe,
  waitSubscribed,
  waitUntil,
  QUIET_MS,
  officialServer,
  target,
} from "./harness.mjs";

const app = target("parity.mjs");
const { port, appKey } = app;
const signinTimeoutMs = Number(process.argv[6]) * 1000;
const hookPorts = [Number(process.argv[7]), Number(process.argv[8])];
if (!(signinTimeoutMs > 0) || !hookPorts.every((p) => p > 0)) {
  console.error(
    "usage: node parity.mjs <port> <app_id> <app_key> <app_secret> <signin_timeout> <hook_port> <filtered_hook_port>",
  );
  process.exit(2);
}

const server = officialServer(app);
PusherClient.logToConsole = process.env.COMPAT_DEBUG === "1";

/** A pusher-js client whose app server is the SDK; it records its connection's errors and states. */
function newClient(label, userId) {
  const client = new PusherClient(appKey, {
    wsHost: "127.0.0.1",
    wsPort: port,
    forceTLS: false,
    enabledTransports: ["ws"],
    cluster: "local",
    channelAuthorization: {
      customHandler: ({ socketId, channelName }, callback) => {
        const member = channelName.startsWith("presence-") ? { user_id: userId } : undefined;
        callback(null, server.authorizeChannel(socketId, channelName, member));
      },
    },
    userAuthentication: {
      customHandler: ({ socketId }, callback) =>
        callback(null, server.authenticateUser(socketId, { id: userId })),
    },
  });
  clients.push(client);
  client.label = label;
  client.errors = [];
  client.states = [];
  client.connection.bind("error", (error) => client.errors.push(error));
  client.connection.bind("state_change", ({ current }) => client.states.push(current));
  return client;
}

async function connected(client) {
  await waitUntil(() => client.connection.state === "connected", `${client.label} to connect`);
}

async function signedIn(client, id) {
  client.signin();
  await waitUntil(() => client.user.user_data?.id === id, `${client.label} to sign in`);
}

/** The codes of the `PusherError`s pusher-js reported on the connection. */
const pusherErrorCodes = (client) =>
  client.errors.filter((e) => e.type === "PusherError").map((e) => e.data?.code);

async function authorizedConnections() {
  const member = newClient("signs-in", "alice");
  const stranger = newClient("never-signs-in", "nobody");
  await Promise.all([connected(member), connected(stranger)]);
  await signedIn(member, "alice");
  check(true, "signs-in signs in with authenticateUser's auth");

  await waitUntil(
    () => stranger.connection.state === "disconnected",
    "the client that never signs in to be closed",
    signinTimeoutMs + 5_000,
  );
  check(true, "the client that never signs in is closed after the sign-in timeout");
  const error = stranger.errors.find((e) => e.type === "PusherError");
  checkEqual(
    error?.data,
    { code: 4009, message: "Connection not authorized within timeout" },
    "pusher-js reports a PusherError with 4009 and Pusher's reason",
  );
  // 4000-4099: pusher-js must not reconnect. Watch longer than its reconnect delays.
  await sleep(3_000);
  checkEqual(stranger.connection.state, "disconnected", "pusher-js does not reconnect after 4009");
  check(
    !stranger.states.slice(stranger.states.indexOf("disconnected")).includes("connecting"),
    "no reconnect attempt after 4009",
    `states: ${stranger.states.join(" -> ")}`,
  );
  checkEqual(member.connection.state, "connected", "the client that signed in stays connected");
  checkEqual(member.errors, [], "the client that signed in saw no error");
  return member;
}

async function clientEventLimits(sender) {
  const receiver = newClient("receiver", "bob");
  await connected(receiver);
  const channelName = `private-limits-${Math.random().toString(36).slice(2, 8)}`;
  const senderChannel = subscribe(sender, channelName);
  const receiverChannel = subscribe(receiver, channelName);
  await waitSubscribed(sender, senderChannel);
  await waitSubscribed(receiver, receiverChannel);
  const relayed = () => receiverChannel.log.filter((e) => e.event.startsWith("client-"));

  const tooLarge = { text: "x".repeat(10 * 1024) };
  check(senderChannel.trigger("client-large", tooLarge), "pusher-js sends 10 KiB + 11 bytes of data");
  const longName = `client-${"n".repeat(194)}`; // 201 characters
  check(senderChannel.trigger(longName, {}), "pusher-js sends a 201-character event name");
  await waitUntil(
    () => received(senderChannel, "pusher:error").length >= 2,
    "two pusher:error on the sender's channel",
  );
  const [large, named] = received(senderChannel, "pusher:error").map((e) => e.data);
  checkEqual(large.code, 4301, "data over 10 KiB: pusher:error 4301 on the channel");
  check(/too large/.test(large.message), "its message says the data is too large", large.message);
  checkEqual(named.code, 4301, "a 201-character name: pusher:error 4301 on the channel");
  check(/too long/.test(named.message), "its message says the name is too long", named.message);
  checkEqual(pusherErrorCodes(sender), [4301, 4301], "the connection's error binding sees both");

  const atLimit = "y".repeat(10 * 1024);
  check(senderChannel.trigger("client-fits", atLimit), "pusher-js sends exactly 10 KiB of data");
  const longest = `client-${"n".repeat(193)}`; // 200 characters
  check(senderChannel.trigger(longest, { ok: true }), "pusher-js sends a 200-character event name");
  await waitUntil(() => relayed().length >= 2, "the receiver to get the events within the limits");
  await sleep(QUIET_MS);
  checkEqual(
    relayed().map((e) => e.event),
    ["client-fits", longest],
    "only the events within the limits are relayed, in order",
  );
  checkEqual(relayed()[0].data, atLimit, "10 KiB of data arrive intact");
  checkEqual(sender.connection.state, "connected", "the sender stays connected");
  check(senderChannel.subscribed, "the sender stays subscribed");
  return channelName;
}

/**
 * A webhook endpoint: records each request's events with its headers and whether the SDK finds
 * its signature valid.
 */
function hookEndpoint(port) {
  const requests = [];
  const http = createServer((request, response) => {
    const chunks = [];
    request.on("data", (chunk) => chunks.push(chunk));
    request.on("end", () => {
      const rawBody = Buffer.concat(chunks).toString("utf8");
      const hook = server.webhook({ headers: request.headers, rawBody });
      requests.push({ valid: hook.isValid(), headers: request.headers, events: hook.getEvents() });
      response.writeHead(200).end();
    });
  });
  http.listen(port, "127.0.0.1");
  return { requests, close: () => http.close() };
}

const eventsOf = (endpoint) => endpoint.requests.flatMap((r) => r.events);

async function webhooks([everything, filtered], member, privateChannelName) {
  const guest = newClient("guest", "carol");
  await connected(guest);
  const roomName = `presence-hooks-${Math.random().toString(36).slice(2, 8)}`;
  const memberRoom = subscribe(member, roomName);
  const guestRoom = subscribe(guest, roomName);
  await waitSubscribed(member, memberRoom);
  await waitSubscribed(guest, guestRoom);
  check(memberRoom.trigger("client-hello", { n: 1 }), "a client event on the presence channel");
  const isHello = (e) => e.name === "client_event" && e.channel === roomName;
  await waitUntil(
    () => eventsOf(everything).some(isHello) && eventsOf(filtered).some(isHello),
    "both endpoints to get the presence channel's client event",
  );
  await sleep(QUIET_MS);

  check(everything.requests.every((r) => r.valid), "every request to the first endpoint is signed validly");
  check(filtered.requests.every((r) => r.valid), "every request to the second endpoint is signed validly");
  check(
    everything.requests.every((r) => r.headers["x-team"] === "realtime"),
    "the first endpoint's requests carry its header",
  );
  check(
    filtered.requests.every((r) => r.headers["x-team"] === undefined),
    "the second endpoint's requests do not",
  );
  const hello = eventsOf(everything).find(isHello);
  checkEqual(
    hello,
    { name: "client_event", channel: roomName, event: "client-hello", data: '{"n":1}',
      socket_id: member.connection.socket_id, user_id: "alice" },
    "client_event as Pusher sends it: data the string the client sent, user_id on presence",
  );
  const occupied = eventsOf(everything)
    .filter((e) => e.name === "channel_occupied")
    .map((e) => e.channel);
  check(
    occupied.includes(privateChannelName) && occupied.includes(roomName),
    "the first endpoint gets channel_occupied for both channels",
    occupied.join(", "),
  );
  const second = eventsOf(filtered);
  check(
    second.every((e) => e.channel.startsWith("presence-")),
    "the second endpoint hears only of presence- channels",
    second.map((e) => e.channel).join(", "),
  );
  checkEqual(
    [...new Set(second.map((e) => e.name))].sort(),
    ["client_event", "member_added"],
    "the second endpoint gets only its event types",
  );
  checkEqual(
    second.filter((e) => e.name === "member_added").map((e) => e.user_id).sort(),
    ["alice", "carol"],
    "member_added once per member at the second endpoint",
  );
}

/** The RequestError a call rejects with; fails if it succeeds. */
async function refusal(what, call) {
  try {
    await call();
  } catch (error) {
    return error;
  }
  fail(`${what}: expected the call to be refused`);
}

async function errorBodies() {
  const wrongSecret = officialServer({ ...app, appSecret: "not-the-secret" });
  const signature = await refusal("a wrongly signed trigger", () =>
    wrongSecret.trigger("news", "e", {}),
  );
  checkEqual(signature.status, 401, "a wrong signature: 401");
  const expected = `Invalid signature: you should have sent HmacSHA256Hex("POST\\n/apps/${app.appId}/events\\nauth_key=${appKey}&auth_timestamp=`;
  check(
    signature.body.startsWith(expected) && !signature.body.includes(app.appSecret),
    "its body names the string to sign, as Pusher's does, and never the secret",
    signature.body,
  );

  const large = await refusal("11 KiB of data", () =>
    server.post({ path: "/events", body: { name: "e", channel: "news", data: "x".repeat(11 * 1024) } }),
  );
  checkEqual(large.status, 413, "data over 10 KiB: 413");
  checkEqual(
    large.body.trim(),
    "The data content of this event exceeds the allowed maximum (10240 bytes)",
    "its body is Pusher's",
  );

  const badChannel = await refusal("a bad channel name", () =>
    server.post({ path: "/events", body: { name: "e", channel: "bad name!", data: "{}" } }),
  );
  checkEqual(badChannel.status, 400, "a bad channel name: 400");
  check(badChannel.body.includes('"bad name!"'), "its body names the channel", badChannel.body);

  const unknown = officialServer({ ...app, appId: "404404" });
  const missing = await refusal("an unknown app", () => unknown.trigger("news", "e", {}));
  checkEqual(missing.status, 404, "an unknown app id: 404");
  check(missing.body.includes("404404"), "its body names the app id", missing.body);
}

start();
const endpoints = hookPorts.map(hookEndpoint);
await errorBodies();
const member = await authorizedConnections();
const privateChannelName = await clientEventLimits(member);
await webhooks(endpoints, member, privateChannelName);
endpoints.forEach((endpoint) => endpoint.close());
for (const client of clients) client.disconnect();
finish();
