// k6 load on the real daemon over mutual TLS: each iteration wraps a fresh 32-byte key under
// the dev file key with a context, unwraps it, and checks the round trip. Run it through
// run.sh, which builds and starts the daemon; BENCHMARKS.md records the results.
import grpc from 'k6/net/grpc';
import { check, fail } from 'k6';
import encoding from 'k6/encoding';
import crypto from 'k6/crypto';

const certs = __ENV.CERTS;
const ca = open(`${certs}/ca.pem`);
const cert = open(`${certs}/client.pem`);
const key = open(`${certs}/client-key.pem`);

const client = new grpc.Client();
client.load([__ENV.PROTO_DIR], 'kmsbroker/v1/broker.proto');

export const options = {
  scenarios: {
    wrap_unwrap: {
      executor: 'constant-vus',
      vus: Number(__ENV.VUS || 16),
      duration: __ENV.DURATION || '20s',
    },
  },
  // Any failed call or wrong round trip fails the run: a fast daemon that answers wrongly is no result.
  thresholds: { checks: ['rate==1'] },
  summaryTrendStats: ['p(50)', 'p(95)', 'p(99)', 'max'],
};

let connected = false;

export default function () {
  if (!connected) {
    // One connection per VU, kept for the run, as a node's client keeps its channel.
    client.connect(__ENV.ADDR, { tls: { cacerts: [ca], cert, key }, timeout: '5s' });
    connected = true;
  }
  const plaintext = encoding.b64encode(crypto.randomBytes(32));
  const context = { backup: `b-${__VU}-${__ITER}` };
  const wrap = client.invoke('kmsbroker.v1.KeyBroker/WrapKey', { key: 'dev', plaintext, context });
  if (!check(wrap, { 'WrapKey OK': (r) => r && r.status === grpc.StatusOK })) {
    fail(`WrapKey: ${JSON.stringify(wrap && wrap.error)}`);
  }
  const unwrap = client.invoke('kmsbroker.v1.KeyBroker/UnwrapKey', {
    wrapped: wrap.message.wrapped,
    context,
  });
  check(unwrap, {
    'UnwrapKey OK': (r) => r && r.status === grpc.StatusOK,
    'round trip': (r) => r && r.message && r.message.plaintext === plaintext,
  });
}
