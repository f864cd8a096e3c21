#!/usr/bin/env node
'use strict';
// A fake Google Cloud KMS for tests: the REST (HTTP/JSON) face of google.cloud.kms.v1, built
// from the real protos, on 127.0.0.1 only. See tests/standins/README.md.
//
//   node server.js PORT [--state FILE] [--node-modules DIR] [--log]
//
// PORT 0 picks a free port. Prints `READY <port>` once it listens. --state keeps keys across
// restarts (a JSON file holding test key material: use a temp dir). --node-modules is where
// protobufjs, proto3-json-serializer and the protos are (default: .standins/npm/node_modules
// at the repository root). --log (or GCP_KMS_FAKE_LOG=1) prints one line per request to
// stderr (never bodies).
//
// Test controls (not part of the Google API), under /_fake/:
//   POST   /_fake/faults   {"method": "Encrypt"|"Decrypt"|"GetCryptoKey"|…|"*",
//                           "action": "error"|"corrupt"|"hang"|"drop", "count": 1,
//                           "status": "UNAVAILABLE", "code": 503, "message": "…",  (error)
//                           "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", …}],
//                           "preset": "SERVICE_DISABLED"|"BILLING_DISABLED"|            (error)
//                                     "EKM_PERMISSION_DENIED"|"EKM_UNAVAILABLE",
//                           "field": "ciphertextCrc32c"}                          (corrupt)
//   DELETE /_fake/faults
//   POST   /_fake/serviceAccounts:disable  {"email": "…"}   (its tokens become 401)
//   POST   /_fake/serviceAccounts:enable   {"email": "…"}
//   GET    /_fake/health

const http = require('http');
const path = require('path');

const { ApiError } = require('./errors');
const { Principals } = require('./iam');
const { Kms } = require('./kms');
const transcode = require('./transcode');

function parseArgs(argv) {
  const opts = {
    port: null, state: null, log: process.env.GCP_KMS_FAKE_LOG === '1',
    modules: path.resolve(__dirname, '../../../.standins/npm/node_modules'),
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--state') opts.state = argv[++i];
    else if (a === '--node-modules') opts.modules = argv[++i];
    else if (a === '--log') opts.log = true;
    else if (/^\d+$/.test(a) && opts.port === null) opts.port = Number(a);
    else throw new Error(`unknown argument ${a}`);
  }
  if (opts.port === null) throw new Error('usage: server.js PORT [--state FILE] [--node-modules DIR] [--log]');
  return opts;
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (c) => {
      size += c.length;
      if (size > 4 * 1024 * 1024) reject(ApiError.invalid('Request payload too large.'));
      else chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

function sendJson(res, code, obj) {
  res.writeHead(code, { 'content-type': 'application/json; charset=UTF-8' });
  res.end(JSON.stringify(obj));
}

// Makes one response field wrong, the way a damaged transfer would.
function corrupt(json, field) {
  const v = json[field];
  if (typeof v === 'boolean' || (v === undefined && /^verified/.test(field))) {
    if (v) delete json[field];
    else json[field] = true;
  } else if (typeof v === 'string' && /crc32c$/i.test(field)) {
    json[field] = String((BigInt(v) + 1n) % 4294967296n);
  } else if (typeof v === 'string') {
    const b = Buffer.from(v, 'base64');
    if (b.length > 0) b[0] ^= 1;
    json[field] = b.toString('base64');
  } else {
    json[field] = '1';
  }
}

function main() {
  const opts = parseArgs(process.argv.slice(2));
  const tc = transcode.load(opts.modules);
  const kms = new Kms(tc.root, opts.state);
  const principals = new Principals();
  const faults = [];
  const hung = [];

  const takeFault = (method) => {
    const i = faults.findIndex((f) => f.method === method || f.method === '*');
    if (i < 0) return null;
    const f = faults[i];
    f.count -= 1;
    if (f.count <= 0) faults.splice(i, 1);
    return f;
  };

  function control(req, res, url, body) {
    const json = body.length ? JSON.parse(body) : {};
    if (req.method === 'GET' && url.pathname === '/_fake/health') return sendJson(res, 200, { ok: true });
    if (req.method === 'DELETE' && url.pathname === '/_fake/faults') {
      faults.length = 0;
      return sendJson(res, 200, {});
    }
    if (req.method === 'POST' && url.pathname === '/_fake/faults') {
      if (!['error', 'corrupt', 'hang', 'drop'].includes(json.action) || !json.method) {
        return sendJson(res, 400, { error: 'need method and action (error|corrupt|hang|drop)' });
      }
      if (json.action === 'corrupt' && !json.field) return sendJson(res, 400, { error: 'corrupt needs field' });
      if (json.preset && !ApiError.preset(json.preset)) return sendJson(res, 400, { error: `unknown preset ${json.preset}` });
      faults.push({ count: 1, ...json });
      return sendJson(res, 200, {});
    }
    const sa = /^\/_fake\/serviceAccounts:(disable|enable)$/.exec(url.pathname);
    if (req.method === 'POST' && sa && typeof json.email === 'string') {
      if (sa[1] === 'disable') principals.disabled.add(json.email);
      else principals.disabled.delete(json.email);
      return sendJson(res, 200, {});
    }
    return sendJson(res, 404, { error: 'unknown control' });
  }

  async function handle(req, res) {
    const url = new URL(req.url, 'http://fake');
    const body = await readBody(req);
    if (url.pathname.startsWith('/_fake/')) return control(req, res, url, body);
    const matched = tc.match(req.method, url.pathname);
    if (!matched) {
      // What Google's front end answers for a path no API serves: HTML, not a Google error.
      res.writeHead(404, { 'content-type': 'text/html; charset=UTF-8' });
      return res.end('<html><body>404. That’s an error. The requested URL was not found on this server.</body></html>');
    }
    const numericEnums = (url.searchParams.get('$alt') || '').includes('enum-encoding=int');
    const name = matched.route.name;
    const who = principals.fromHeaders(req.headers);
    let bodyJson;
    if (body.length > 0) {
      try {
        bodyJson = JSON.parse(body.toString('utf8'));
      } catch (_) {
        throw ApiError.invalid('Invalid JSON payload received. Unexpected token.');
      }
    }
    const fault = takeFault(name);
    if (fault && fault.action === 'hang') return hung.push(res);
    if (fault && fault.action === 'drop') return req.socket.destroy();
    if (fault && fault.action === 'error') {
      const preset = fault.preset && ApiError.preset(fault.preset, matched.value);
      if (preset) throw preset;
      throw new ApiError(fault.status || 'UNAVAILABLE', fault.message || 'The service is currently unavailable.', fault.code, fault.details);
    }
    const request = tc.request(matched, url.searchParams, bodyJson);
    const handler = kms[name];
    if (typeof handler !== 'function' || name[0] !== name[0].toUpperCase()) {
      throw new ApiError('UNIMPLEMENTED', `Method ${name} is not implemented by the fake.`);
    }
    const json = tc.response(matched.route, handler.call(kms, request, who), numericEnums);
    if (fault && fault.action === 'corrupt') corrupt(json, fault.field);
    return sendJson(res, 200, json);
  }

  const server = http.createServer((req, res) => {
    handle(req, res)
      .catch((e) => {
        if (e instanceof ApiError) return sendJson(res, e.httpCode, e.body());
        process.stderr.write(`gcp_kms_fake: internal error: ${e && e.stack}\n`);
        return sendJson(res, 500, new ApiError('INTERNAL', 'Internal error encountered.').body());
      })
      .finally(() => {
        if (opts.log && res.writableEnded) process.stderr.write(`gcp_kms_fake: ${req.method} ${req.url} -> ${res.statusCode}\n`);
      });
  });
  server.listen(opts.port, '127.0.0.1', () => {
    process.stdout.write(`READY ${server.address().port}\n`);
  });
  const stop = () => process.exit(0);
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main();
