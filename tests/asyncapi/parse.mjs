// Parses the AsyncAPI document on stdin with the official parser; prints its
// diagnostics and what it read of the document, as JSON on stdout.
import { Parser } from "@asyncapi/parser";

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const { document, diagnostics } = await new Parser().parse(Buffer.concat(chunks).toString());
const read = document && {
  version: document.version(),
  channels: document.channels().all().map((channel) => ({
    id: channel.id(),
    address: channel.address(),
    servers: channel.servers().all().map((server) => server.protocol()),
    messages: channel.messages().all().map((message) => ({
      name: message.name(),
      fields: Object.keys(message.payload().properties() ?? {}),
      required: message.payload().required() ?? [],
    })),
  })),
  operations: document.operations().all().map((operation) => ({
    action: operation.action(),
    channels: operation.channels().all().map((channel) => channel.id()),
  })),
};
const severity = ["error", "warning", "info", "hint"];
console.log(JSON.stringify({
  diagnostics: diagnostics.map((d) => ({
    severity: severity[d.severity],
    code: d.code,
    message: d.message,
    path: d.path,
  })),
  document: read,
}));
