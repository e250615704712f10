// Runs bytes from standard input through eventsource-parser, the parser most Node and browser
// libraries build on, and prints one JSON object: the events, retry values and comments it saw.
// The bytes are decoded and fed twice, whole and in pseudo-random small pieces (split inside
// lines, CRLF pairs and UTF-8 sequences); both feeds must parse the same or this exits 1.
import { createParser } from 'eventsource-parser';

function parse(bytes, pieceSizes) {
  const seen = { events: [], retries: [], comments: [], errors: [] };
  const parser = createParser({
    onEvent: (e) => seen.events.push({ event: e.event ?? null, id: e.id ?? null, data: e.data }),
    onRetry: (ms) => seen.retries.push(ms),
    onComment: (c) => seen.comments.push(c),
    onError: (err) => seen.errors.push(String(err.message || err)),
  });
  const decoder = new TextDecoder('utf-8', { fatal: true });
  let at = 0;
  for (let i = 0; at < bytes.length; i++) {
    const n = pieceSizes ? pieceSizes(i) : bytes.length;
    parser.feed(decoder.decode(bytes.subarray(at, at + n), { stream: true }));
    at += n;
  }
  parser.feed(decoder.decode());
  return seen;
}

const chunks = [];
for await (const c of process.stdin) chunks.push(c);
const bytes = new Uint8Array(Buffer.concat(chunks));

let seed = Number(process.argv[2] || 1);
const small = () => { seed = (seed * 1103515245 + 12345) % 2147483648; return 1 + (seed % 7); };
const whole = parse(bytes, null);
const pieces = parse(bytes, small);
if (JSON.stringify(whole) !== JSON.stringify(pieces)) {
  console.error('whole and piecewise feeds differ');
  process.exit(1);
}
process.stdout.write(JSON.stringify(whole) + '\n');
