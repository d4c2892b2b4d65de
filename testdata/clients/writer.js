// A client of the discovery port, as an application would use it: ioredis's
// Sentinel support, configured as its documentation says for following a
// failover (failoverDetector, and a reconnect on READONLY). It writes
// w:<i> = i for i = 0, 1, ... through whatever the Sentinels name as the
// primary, prints "ack <i>" for each write acknowledged and "err <kind>" for
// each refused (then tries i again), and stops when its stdin closes.
//   node writer.js host:port,host:port,... <master name> <password> [key prefix, default w]
const Redis = require("ioredis");

const [addrs, name, password, prefix = "w"] = process.argv.slice(2);
const sentinels = addrs.split(",").map((a) => {
  const i = a.lastIndexOf(":");
  return { host: a.slice(0, i), port: Number(a.slice(i + 1)) };
});
const primary = new Redis({
  sentinels, name,
  password: password || undefined,
  sentinelPassword: password || undefined,
  failoverDetector: true,
  reconnectOnError: (err) => (err.message.startsWith("READONLY") ? 2 : false),
  maxRetriesPerRequest: 1,
  connectTimeout: 1000,
  commandTimeout: 1000,
});
primary.on("error", () => {});

let stop = false;
process.stdin.on("end", () => { stop = true; });
process.stdin.resume();
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
(async () => {
  let i = 0;
  while (!stop) {
    try {
      await primary.set(prefix + ":" + i, i);
      process.stdout.write("ack " + i + "\n");
      i++;
    } catch (e) {
      process.stdout.write("err " + String(e.message).split(" ")[0] + "\n");
      await sleep(20);
    }
    await sleep(1);
  }
  process.stdout.write("done\n");
  primary.disconnect();
  process.exit(0);
})();
