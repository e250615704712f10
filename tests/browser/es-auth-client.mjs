// The `eventsource` package with a fetch override that sends `Authorization: Bearer TOKEN`, the
// token being the last line read from standard input (the application renewing it): the first
// line is the first token; a later line replaces it for every later (re)connection. Connects
// to the URL in argv[2] once the first token is in, and listens for `message` plus the event
// types in argv[3..]. Prints one JSON line per happening, as es-client.mjs does, plus
// {"kind": "fetch", "token": N, "lastEventId": L} for each request (N: which line's token, 0
// first; L: the Last-Event-ID it carries, or null). Exits when standard input closes.
import { EventSource } from 'eventsource';
import readline from 'node:readline';

const [url, ...types] = process.argv.slice(2);
const say = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const tokens = [];
let es = null;

function start() {
    es = new EventSource(url, {
        fetch: (input, init) => {
            const n = tokens.length - 1;
            const headers = { ...(init.headers || {}), Authorization: 'Bearer ' + tokens[n] };
            say({ kind: 'fetch', token: n, lastEventId: headers['Last-Event-ID'] ?? null });
            return fetch(input, { ...init, headers });
        },
    });
    es.addEventListener('open', () => say({ kind: 'open' }));
    es.addEventListener('error', () => say({ kind: 'error', readyState: es.readyState }));
    const record = (e) => say({ kind: 'event', type: e.type, data: e.data, id: e.lastEventId });
    es.addEventListener('message', record);
    for (const t of types) es.addEventListener(t, record);
}

const lines = readline.createInterface({ input: process.stdin });
lines.on('line', (line) => {
    if (!line.trim()) return;
    tokens.push(line.trim());
    if (!es) start();
});
lines.on('close', () => { if (es) es.close(); process.exit(0); });
