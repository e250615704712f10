// Mints JSON Web Tokens with jose, the JWT library most Node applications use, for
// tests/test_auth.py. The description is JSON, from argv[2] or else standard input: one object
// or an array of them (one token per line, in order). An object's fields:
//   secret   the HMAC key, a string (its UTF-8 bytes) (required)
//   claims   the payload's claims, an object (default {})
//   alg      HS256 (default), HS384 or HS512
//   exp      seconds from now for the exp claim (may be negative); absent = no exp
//   nbf      seconds from now for the nbf claim; absent = no nbf
//   iat      true: an iat claim of now
//   aud      the aud claim, a string or an array of strings
//   header   more fields for the protected header (typ is JWT unless given here)
// Prints each token on a line of its own, nothing else.
import { SignJWT } from 'jose';

async function input() {
    if (process.argv[2] !== undefined) return process.argv[2];
    const chunks = [];
    for await (const c of process.stdin) chunks.push(c);
    return Buffer.concat(chunks).toString('utf8');
}

async function mint(d) {
    if (typeof d.secret !== 'string') throw new Error('jwt.mjs: "secret" (a string) is required');
    const now = Math.floor(Date.now() / 1000);
    const jwt = new SignJWT(d.claims || {})
        .setProtectedHeader({ typ: 'JWT', ...(d.header || {}), alg: d.alg || 'HS256' });
    if (d.exp !== undefined) jwt.setExpirationTime(now + d.exp);
    if (d.nbf !== undefined) jwt.setNotBefore(now + d.nbf);
    if (d.iat) jwt.setIssuedAt(now);
    if (d.aud !== undefined) jwt.setAudience(d.aud);
    return jwt.sign(new TextEncoder().encode(d.secret));
}

const desc = JSON.parse(await input());
for (const d of Array.isArray(desc) ? desc : [desc]) process.stdout.write((await mint(d)) + '\n');
