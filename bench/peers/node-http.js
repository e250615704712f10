// The plain Node.js `http` SSE server of the seed article, as a benchmark peer (stdlib only).
//   node bench/peers/node-http.js PORT
// GET /events: a text/event-stream response kept open in a set.
// POST /publish: the body becomes one event written to every open response.
// Prints "listening PORT" on stdout once it accepts connections.
'use strict';
const http = require('http');

const port = Number(process.argv[2] || 8080);
const clients = new Set();
let nextId = 0;

const server = http.createServer((req, res) => {
  const path = req.url.split('?')[0];
  if (req.method === 'GET' && path === '/events') {
    res.writeHead(200, {
      'Content-Type': 'text/event-stream',
      'Cache-Control': 'no-cache',
      Connection: 'keep-alive',
    });
    // Node holds the head until the first write; the article's handler writes at once, here
    // the first event may come much later, so send the head now (EventSource opens on it).
    res.flushHeaders();
    clients.add(res);
    req.on('close', () => clients.delete(res));
    return;
  }
  if (req.method === 'POST' && path === '/publish') {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const data = Buffer.concat(chunks).toString();
      const id = ++nextId;
      for (const client of clients) client.write(`id: ${id}\ndata: ${data}\n\n`);
      res.writeHead(204);
      res.end();
    });
    return;
  }
  res.writeHead(404, { 'Content-Length': '0' });
  res.end();
});

server.keepAliveTimeout = 300000; // the publisher keeps one connection for all its events
server.headersTimeout = 301000;
server.requestTimeout = 0; // subscribers' responses never end
server.listen(port, '127.0.0.1', 65535, () => console.log(`listening ${port}`));
