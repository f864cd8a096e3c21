'use strict';
// Who is calling, and what IAM lets them do.
//
// Caller identity:
// - no Authorization header: anonymous; matches the member `allUsers` only.
// - `Bearer <JWT>`: google-cloud-auth's service-account credentials send a self-signed JWT;
//   its `iss` (the client_email) becomes `serviceAccount:<email>`. The signature is NOT
//   verified (a test stand-in), but an expired token, a token that is not a JWT, or one from
//   an account disabled through /_fake/serviceAccounts:disable is UNAUTHENTICATED (401).
//
// Policies deny by default, as Cloud KMS does: the crypto and read methods need a binding, on
// the key or its ring, whose role grants the permission to a matching member (allow policies
// are additive down the hierarchy). A key or ring with no policy grants nothing. Admin
// methods (create, update, destroy, setIamPolicy, …) are never checked: the tests are the
// admin. (The tests' `Fake::create_key` grants `allUsers` explicitly, for AUTH=none.)

const { ApiError } = require('./errors');

const USE_ENCRYPT = 'cloudkms.cryptoKeyVersions.useToEncrypt';
const USE_DECRYPT = 'cloudkms.cryptoKeyVersions.useToDecrypt';
const VIEW = [
  'cloudkms.cryptoKeys.get', 'cloudkms.cryptoKeys.list', 'cloudkms.cryptoKeyVersions.get',
  'cloudkms.cryptoKeyVersions.list', 'cloudkms.keyRings.get', 'cloudkms.keyRings.list',
  'cloudkms.locations.get', 'cloudkms.locations.list',
];
const ADMIN = [
  ...VIEW, 'cloudkms.cryptoKeys.create', 'cloudkms.cryptoKeys.update',
  'cloudkms.cryptoKeys.getIamPolicy', 'cloudkms.cryptoKeys.setIamPolicy',
  'cloudkms.cryptoKeyVersions.create', 'cloudkms.cryptoKeyVersions.update',
  'cloudkms.cryptoKeyVersions.destroy', 'cloudkms.cryptoKeyVersions.restore',
  'cloudkms.keyRings.create', 'cloudkms.keyRings.getIamPolicy', 'cloudkms.keyRings.setIamPolicy',
];

// The predefined roles the fake knows (a subset of Cloud KMS's).
const ROLES = {
  'roles/cloudkms.cryptoKeyEncrypterDecrypter': [USE_ENCRYPT, USE_DECRYPT],
  'roles/cloudkms.cryptoKeyEncrypter': [USE_ENCRYPT],
  'roles/cloudkms.cryptoKeyDecrypter': [USE_DECRYPT],
  'roles/cloudkms.viewer': VIEW,
  'roles/cloudkms.admin': ADMIN,
  'roles/owner': [...ADMIN, USE_ENCRYPT, USE_DECRYPT],
};

class Principals {
  constructor() {
    this.disabled = new Set();
  }

  fromHeaders(headers) {
    const auth = headers.authorization;
    if (auth === undefined) return { anonymous: true, member: 'allUsers' };
    const m = /^Bearer\s+([^\s]+)$/i.exec(auth);
    if (!m) throw ApiError.unauthenticated();
    const parts = m[1].split('.');
    if (parts.length !== 3) throw ApiError.unauthenticated();
    let claims;
    try {
      claims = JSON.parse(Buffer.from(parts[1], 'base64url').toString('utf8'));
    } catch (_) {
      throw ApiError.unauthenticated();
    }
    const email = claims && claims.iss;
    if (typeof email !== 'string' || !email.includes('@')) throw ApiError.unauthenticated();
    if (typeof claims.exp === 'number' && claims.exp * 1000 < Date.now()) throw ApiError.unauthenticated();
    if (this.disabled.has(email)) throw ApiError.unauthenticated();
    return { anonymous: false, member: `serviceAccount:${email}` };
  }
}

function memberMatches(member, principal) {
  return member === 'allUsers'
    || (member === 'allAuthenticatedUsers' && !principal.anonymous)
    || member === principal.member;
}

// `policies`: the policies on the resource and its parents (undefined where never set).
function permitted(policies, principal, permission) {
  const set = policies.filter(Boolean);
  return set.some((p) => (p.bindings || []).some((b) => (ROLES[b.role] || []).includes(permission)
    && (b.members || []).some((m) => memberMatches(m, principal))));
}

module.exports = { Principals, permitted, USE_ENCRYPT, USE_DECRYPT, ROLES };
