"use strict";
// Test-only Fluentd forward-protocol receiver.
//
// A real implementation of the protocol that we did not write (@fluent-org/logger's
// FluentServer, which acknowledges `chunk` options), so the Python sink is tested
// against someone else's reading of the spec. Every event it receives is appended as
// one JSON line {tag, time, record} to --output, synchronously, so whatever the server
// acknowledged is on disk before this process can handle a signal.
//
// Usage: node receiver.js --port PORT --output FILE   (PORT 0 = any free port)
// Prints "ready PORT" once listening on 127.0.0.1. SIGTERM/SIGINT stop it between
// messages (never between an acknowledgement and the write of its entries).

const fs = require("fs");
const { FluentServer } = require("@fluent-org/logger");

function parseArgs(argv) {
  const options = { port: null, output: null };
  for (let i = 0; i < argv.length; i += 2) {
    const name = argv[i];
    const value = argv[i + 1];
    if (value === undefined) {
      throw new Error(`${name}: missing value`);
    }
    if (name === "--port") {
      const port = Number(value);
      if (!Number.isInteger(port) || port < 0 || port > 65535) {
        throw new Error(`--port: expected an integer 0..65535, got ${JSON.stringify(value)}`);
      }
      options.port = port;
    } else if (name === "--output") {
      options.output = value;
    } else {
      throw new Error(`${name}: unknown option (known: --port, --output)`);
    }
  }
  if (options.port === null || options.output === null) {
    throw new Error("usage: node receiver.js --port PORT --output FILE");
  }
  return options;
}

function seconds(time) {
  // Message-mode clients may send integer seconds; EventTime carries nanoseconds.
  return typeof time === "number" ? time : time.epoch + time.nano / 1e9;
}

async function main() {
  const { port, output } = parseArgs(process.argv.slice(2));
  const fd = fs.openSync(output, "a");
  const server = new FluentServer({ listenOptions: { host: "127.0.0.1", port } });
  server.on("entry", (tag, time, record) => {
    fs.writeSync(fd, JSON.stringify({ tag, time: seconds(time), record }) + "\n");
  });
  const stop = () => {
    fs.closeSync(fd);
    process.exit(0);
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
  await server.listen();
  process.stdout.write(`ready ${server.port}\n`);
}

main().catch((error) => {
  process.stderr.write(`fluentd test receiver: ${error.message}\n`);
  process.exit(2);
});
