// The `eventsource` package, the EventSource most Node programs use, connected to the URL in
// argv[2] and listening for `message` plus the event types in argv[3..]. Prints one JSON line
// per happening: {"kind": "open"}, {"kind": "error", "readyState": N} or
// {"kind": "event", "type": T, "data": D, "id": I}. Exits when standard input closes.
import { EventSource } from 'eventsource';

const [url, ...types] = process.argv.slice(2);
const es = new EventSource(url);
const say = (o) => process.stdout.write(JSON.stringify(o) + '\n');
es.addEventListener('open', () => say({ kind: 'open' }));
es.addEventListener('error', () => say({ kind: 'error', readyState: es.readyState }));
const record = (e) => say({ kind: 'event', type: e.type, data: e.data, id: e.lastEventId });
es.addEventListener('message', record);
for (const t of types) es.addEventListener(t, record);

process.stdin.resume();
process.stdin.on('end', () => { es.close(); process.exit(0); });
