// The better-sse package (npm) as a benchmark peer: one channel, the API of node-http.js.
//   node bench/peers/better-sse.js PORT     (after `npm ci` in bench/)
// GET /events: createSession + channel.register. POST /publish: channel.broadcast(body).
// Prints "listening PORT" on stdout once it accepts connections.
'use strict';
const http = require('http');
const { createSession, createChannel } = require('better-sse');

const port = Number(process.argv[2] || 8080);
const channel = createChannel();

const server = http.createServer(async (req, res) => {
  const path = req.url.split('?')[0];
  if (req.method === 'GET' && path === '/events') {
    // Data goes out as sent (the default serializer would JSON-quote it); no keep-alive
    // comments, as no other server in the benchmark sends heartbeats.
    const session = await createSession(req, res, { serializer: String, keepAlive: null });
    channel.register(session);
    return;
  }
  if (req.method === 'POST' && path === '/publish') {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      channel.broadcast(Buffer.concat(chunks).toString());
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
