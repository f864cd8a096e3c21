'use strict';
// The key store and the KeyManagementService methods the fake implements.
//
// Key rings, keys (purpose ENCRYPT_DECRYPT only) and versions with the real states
// (ENABLED, DISABLED, DESTROY_SCHEDULED → DESTROYED after the key's destroyScheduledDuration,
// which the fake lets be as short as a test likes). Each version is an AES-256-GCM key; a
// ciphertext is `0x01 | sha256(key name)[0..8] | version id (u32 BE) | nonce (12) | GCM
// ciphertext+tag`, the header authenticated along with the caller's AAD, so like Cloud KMS
// a ciphertext names its version and Decrypt on the CryptoKey finds it. Messages follow
// Cloud KMS's wording where it is known ("… is not enabled, current state is: DISABLED.").
//
// Protection levels: a key is SOFTWARE unless created with versionTemplate.protectionLevel
// HSM. Limits follow EncryptRequest's documentation: SOFTWARE, 64 KiB of plaintext and
// 64 KiB of AAD; HSM, plaintext and AAD together at most 8 KiB (INVALID_ARGUMENT beyond).

const crypto = require('crypto');
const fs = require('fs');

const { ApiError } = require('./errors');
const { permitted, USE_ENCRYPT, USE_DECRYPT } = require('./iam');
const { crc32c } = require('./crc32c');

const LOCATION_RE = /^projects\/[^/]+\/locations\/[^/]+$/;
const RING_RE = /^projects\/[^/]+\/locations\/[^/]+\/keyRings\/[^/]+$/;
const KEY_RE = /^(projects\/[^/]+\/locations\/[^/]+\/keyRings\/[^/]+)\/cryptoKeys\/[^/]+$/;
const VERSION_RE = /^(projects\/[^/]+\/locations\/[^/]+\/keyRings\/[^/]+\/cryptoKeys\/[^/]+)\/cryptoKeyVersions\/([^/]+)$/;
const ID_RE = /^[a-zA-Z0-9_-]{1,63}$/;
const MAX_DATA = 64 * 1024;
const HSM_MAX_COMBINED = 8 * 1024;
const LEVELS = ['SOFTWARE', 'HSM'];
const DEFAULT_DESTROY_MS = 30 * 24 * 3600 * 1000; // Cloud KMS's default: 30 days
const HEADER = 1 + 8 + 4 + 12;
const EMPTY_POLICY_ETAG = Buffer.from('ACAB', 'base64');

const ts = (ms) => ({ seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1e6 });
const i64 = (w) => (w === null || w === undefined ? null : Number(w.value.toString()));

function badName(name) {
  return ApiError.invalid(`Resource name [${name}] does not match any known resource name pattern.`);
}

class Kms {
  constructor(root, stateFile) {
    this.stateFile = stateFile;
    this.purposeEnum = root.lookupEnum('google.cloud.kms.v1.CryptoKey.CryptoKeyPurpose');
    this.stateEnum = root.lookupEnum('google.cloud.kms.v1.CryptoKeyVersion.CryptoKeyVersionState');
    this.levelEnum = root.lookupEnum('google.cloud.kms.v1.ProtectionLevel');
    this.keyRings = {};
    this.keys = {};
    if (stateFile && fs.existsSync(stateFile)) {
      const saved = JSON.parse(fs.readFileSync(stateFile, 'utf8'));
      this.keyRings = saved.keyRings;
      this.keys = saved.keys;
    }
  }

  save() {
    if (!this.stateFile) return;
    const tmp = `${this.stateFile}.tmp`;
    fs.writeFileSync(tmp, JSON.stringify({ keyRings: this.keyRings, keys: this.keys }), { mode: 0o600 });
    fs.renameSync(tmp, this.stateFile);
  }

  enumName(e, v) {
    return typeof v === 'number' ? e.valuesById[v] : v;
  }

  // ---- lookups -------------------------------------------------------------------------

  ring(name) {
    if (!RING_RE.test(name)) throw badName(name);
    const ring = this.keyRings[name];
    if (!ring) throw ApiError.notFound(`KeyRing ${name} not found.`);
    return ring;
  }

  key(name) {
    if (!KEY_RE.test(name)) throw badName(name);
    const key = this.keys[name];
    if (!key) throw ApiError.notFound(`CryptoKey ${name} not found.`);
    this.settle(key);
    return key;
  }

  version(name) {
    const m = VERSION_RE.exec(name);
    if (!m) throw badName(name);
    const key = this.key(m[1]);
    const v = key.versions[m[2]];
    if (!v) throw ApiError.notFound(`CryptoKeyVersion ${name} not found.`);
    return { key, v, name };
  }

  // A scheduled destruction happens when its time comes (checked lazily).
  settle(key) {
    let changed = false;
    for (const v of Object.values(key.versions)) {
      if (v.state === 'DESTROY_SCHEDULED' && Date.now() >= v.destroyTime) {
        Object.assign(v, { state: 'DESTROYED', material: null, destroyEventTime: v.destroyTime });
        changed = true;
      }
    }
    if (changed) this.save();
  }

  // IAM: the key's and its ring's policies (the ring's alone when the key does not exist, so
  // a caller without a ring grant gets the same 403 for a missing key as for a refused one,
  // and only one with a ring grant gets to the method's NOT_FOUND).
  authorize(who, keyName, permission) {
    const m = KEY_RE.exec(keyName);
    const ring = m && this.keyRings[m[1]];
    const key = this.keys[keyName];
    if (!permitted([ring && ring.policy, key && key.policy], who, permission)) {
      throw ApiError.denied(permission, keyName);
    }
  }

  // ---- views ---------------------------------------------------------------------------

  versionView(key, v) {
    return {
      name: `${key.name}/cryptoKeyVersions/${v.id}`,
      state: v.state,
      protectionLevel: key.level || 'SOFTWARE',
      algorithm: 'GOOGLE_SYMMETRIC_ENCRYPTION',
      createTime: ts(v.createTime),
      generateTime: ts(v.createTime),
      destroyTime: v.destroyTime ? ts(v.destroyTime) : undefined,
      destroyEventTime: v.destroyEventTime ? ts(v.destroyEventTime) : undefined,
    };
  }

  keyView(key) {
    const primary = key.primaryId && key.versions[key.primaryId];
    return {
      name: key.name,
      primary: primary ? this.versionView(key, primary) : undefined,
      purpose: 'ENCRYPT_DECRYPT',
      createTime: ts(key.createTime),
      versionTemplate: { protectionLevel: key.level || 'SOFTWARE', algorithm: 'GOOGLE_SYMMETRIC_ENCRYPTION' },
      destroyScheduledDuration: { seconds: Math.floor(key.destroyMs / 1000), nanos: (key.destroyMs % 1000) * 1e6 },
      labels: key.labels,
    };
  }

  newVersion(key) {
    const id = String(key.nextId++);
    key.versions[id] = {
      id, state: 'ENABLED', createTime: Date.now(), material: crypto.randomBytes(32).toString('base64'),
    };
    return key.versions[id];
  }

  policyTarget(resource) {
    if (KEY_RE.test(resource)) return this.key(resource);
    return this.ring(resource);
  }

  // ---- admin methods (no IAM checks) ---------------------------------------------------

  CreateKeyRing(req) {
    if (!LOCATION_RE.test(req.parent)) throw badName(req.parent);
    if (!ID_RE.test(req.keyRingId)) throw ApiError.invalid('key_ring_id must match [a-zA-Z0-9_-]{1,63}.');
    const name = `${req.parent}/keyRings/${req.keyRingId}`;
    if (this.keyRings[name]) throw new ApiError('ALREADY_EXISTS', `KeyRing ${name} already exists.`);
    this.keyRings[name] = { name, createTime: Date.now() };
    this.save();
    return { name, createTime: ts(this.keyRings[name].createTime) };
  }

  GetKeyRing(req) {
    const ring = this.ring(req.name);
    return { name: ring.name, createTime: ts(ring.createTime) };
  }

  ListKeyRings(req) {
    const rings = Object.values(this.keyRings).filter((r) => r.name.startsWith(`${req.parent}/`));
    return { keyRings: rings.map((r) => ({ name: r.name, createTime: ts(r.createTime) })), totalSize: rings.length };
  }

  CreateCryptoKey(req) {
    this.ring(req.parent);
    if (!ID_RE.test(req.cryptoKeyId)) throw ApiError.invalid('crypto_key_id must match [a-zA-Z0-9_-]{1,63}.');
    const name = `${req.parent}/cryptoKeys/${req.cryptoKeyId}`;
    if (this.keys[name]) throw new ApiError('ALREADY_EXISTS', `CryptoKey ${name} already exists.`);
    const body = req.cryptoKey || {};
    if (this.enumName(this.purposeEnum, body.purpose) !== 'ENCRYPT_DECRYPT') {
      throw ApiError.invalid('The fake supports only purpose ENCRYPT_DECRYPT.');
    }
    const template = body.versionTemplate || {};
    const level = template.protectionLevel === undefined || template.protectionLevel === null
      ? 'SOFTWARE' : this.enumName(this.levelEnum, template.protectionLevel);
    if (level !== 'PROTECTION_LEVEL_UNSPECIFIED' && !LEVELS.includes(level)) {
      throw ApiError.invalid('The fake supports only protection levels SOFTWARE and HSM.');
    }
    const d = body.destroyScheduledDuration;
    const destroyMs = d ? Number(d.seconds.toString()) * 1000 + Math.floor((d.nanos || 0) / 1e6) : DEFAULT_DESTROY_MS;
    const key = {
      name, createTime: Date.now(), destroyMs, labels: { ...(body.labels || {}) },
      level: level === 'HSM' ? 'HSM' : 'SOFTWARE',
      primaryId: null, nextId: 1, versions: {}, policy: undefined,
    };
    if (!req.skipInitialVersionCreation) key.primaryId = this.newVersion(key).id;
    this.keys[name] = key;
    this.save();
    return this.keyView(key);
  }

  ListCryptoKeys(req) {
    this.ring(req.parent);
    const keys = Object.values(this.keys).filter((k) => k.name.startsWith(`${req.parent}/cryptoKeys/`));
    keys.forEach((k) => this.settle(k));
    return { cryptoKeys: keys.map((k) => this.keyView(k)), totalSize: keys.length };
  }

  CreateCryptoKeyVersion(req) {
    const key = this.key(req.parent);
    const v = this.newVersion(key); // like Cloud KMS: not primary until updatePrimaryVersion
    this.save();
    return this.versionView(key, v);
  }

  ListCryptoKeyVersions(req) {
    const key = this.key(req.parent);
    const all = Object.values(key.versions).map((v) => this.versionView(key, v));
    return { cryptoKeyVersions: all, totalSize: all.length };
  }

  UpdateCryptoKeyVersion(req) {
    const body = req.cryptoKeyVersion || {};
    const { key, v, name } = this.version(body.name || '');
    const paths = (req.updateMask && req.updateMask.paths) || [];
    if (paths.length === 0) throw ApiError.invalid('update_mask is required.');
    if (paths.some((p) => p !== 'state')) throw ApiError.invalid('The fake can update only "state".');
    const want = this.enumName(this.stateEnum, body.state);
    if (want !== 'ENABLED' && want !== 'DISABLED') {
      throw ApiError.invalid('crypto_key_version.state can only be set to ENABLED or DISABLED.');
    }
    if (v.state !== 'ENABLED' && v.state !== 'DISABLED') {
      throw ApiError.precondition(`${name} is not in state ENABLED or DISABLED, current state is: ${v.state}.`);
    }
    v.state = want;
    this.save();
    return this.versionView(key, v);
  }

  UpdateCryptoKeyPrimaryVersion(req) {
    const key = this.key(req.name);
    if (!key.versions[req.cryptoKeyVersionId]) {
      throw ApiError.notFound(`CryptoKeyVersion ${req.name}/cryptoKeyVersions/${req.cryptoKeyVersionId} not found.`);
    }
    key.primaryId = req.cryptoKeyVersionId;
    this.save();
    return this.keyView(key);
  }

  DestroyCryptoKeyVersion(req) {
    const { key, v, name } = this.version(req.name);
    if (v.state !== 'ENABLED' && v.state !== 'DISABLED') {
      throw ApiError.precondition(`${name} is not in state ENABLED or DISABLED, current state is: ${v.state}.`);
    }
    Object.assign(v, { state: 'DESTROY_SCHEDULED', destroyTime: Date.now() + key.destroyMs });
    this.save();
    return this.versionView(key, v);
  }

  RestoreCryptoKeyVersion(req) {
    const { key, v, name } = this.version(req.name);
    if (v.state !== 'DESTROY_SCHEDULED') {
      throw ApiError.precondition(`${name} is not in state DESTROY_SCHEDULED, current state is: ${v.state}.`);
    }
    Object.assign(v, { state: 'DISABLED', destroyTime: null });
    this.save();
    return this.versionView(key, v);
  }

  SetIamPolicy(req) {
    const target = this.policyTarget(req.resource);
    const p = req.policy;
    if (!p) throw ApiError.invalid('policy is required.');
    const etag = p.etag && Buffer.from(p.etag);
    if (etag && etag.length > 0 && target.policy && etag.toString('base64') !== target.policy.etag) {
      throw new ApiError('ABORTED', 'There were concurrent policy changes. Please retry the whole read-modify-write with exponential backoff.');
    }
    target.policy = {
      version: p.version || 1,
      bindings: (p.bindings || []).map((b) => ({ role: b.role, members: [...(b.members || [])] })),
      etag: crypto.randomBytes(8).toString('base64'),
    };
    this.save();
    return this.policyView(target.policy);
  }

  GetIamPolicy(req) {
    const target = this.policyTarget(req.resource);
    return target.policy ? this.policyView(target.policy) : { version: 1, etag: EMPTY_POLICY_ETAG };
  }

  policyView(p) {
    return { version: p.version, bindings: p.bindings, etag: Buffer.from(p.etag, 'base64') };
  }

  // ---- methods that check IAM ----------------------------------------------------------

  // Needs no permission. Like google.iam.v1's: "If the resource does not exist, this will
  // return an empty set of permissions, not a NOT_FOUND error" (iam_policy.proto).
  TestIamPermissions(req, who) {
    const known = KEY_RE.test(req.resource) ? this.keys[req.resource] : this.keyRings[req.resource];
    if (!known) {
      if (!KEY_RE.test(req.resource) && !RING_RE.test(req.resource)) throw badName(req.resource);
      return { permissions: [] };
    }
    const target = this.policyTarget(req.resource);
    const m = KEY_RE.exec(req.resource);
    const ring = m ? this.keyRings[m[1]] : target;
    const policies = [ring && ring.policy, m ? target.policy : undefined];
    return { permissions: (req.permissions || []).filter((p) => permitted(policies, who, p)) };
  }

  GetCryptoKey(req, who) {
    this.authorize(who, req.name, 'cloudkms.cryptoKeys.get');
    return this.keyView(this.key(req.name));
  }

  GetCryptoKeyVersion(req, who) {
    const m = VERSION_RE.exec(req.name);
    if (!m) throw badName(req.name);
    this.authorize(who, m[1], 'cloudkms.cryptoKeyVersions.get');
    const { key, v } = this.version(req.name);
    return this.versionView(key, v);
  }

  Encrypt(req, who) {
    const m = /^(.*?)(?:\/cryptoKeyVersions\/([^/]+))?$/.exec(req.name);
    if (!KEY_RE.test(m[1])) throw badName(req.name);
    this.authorize(who, m[1], USE_ENCRYPT);
    const key = this.key(m[1]);
    const plaintext = Buffer.from(req.plaintext || []);
    const aad = Buffer.from(req.additionalAuthenticatedData || []);
    if (plaintext.length === 0) throw ApiError.invalid('plaintext is required.');
    if (plaintext.length > MAX_DATA) throw ApiError.invalid(`The plaintext must be at most ${MAX_DATA} bytes.`);
    if (aad.length > MAX_DATA) throw ApiError.invalid(`The additional_authenticated_data must be at most ${MAX_DATA} bytes.`);
    if (key.level === 'HSM' && plaintext.length + aad.length > HSM_MAX_COMBINED) {
      throw ApiError.invalid(
        `The combined length of the plaintext and additional_authenticated_data fields must be no larger than ${HSM_MAX_COMBINED} bytes for HSM keys.`,
      );
    }
    checkCrc(req.plaintextCrc32c, plaintext, 'plaintext');
    checkCrc(req.additionalAuthenticatedDataCrc32c, aad, 'additional_authenticated_data');
    const id = m[2] || key.primaryId;
    if (!id) throw ApiError.precondition(`${key.name} has no primary CryptoKeyVersion.`);
    const v = key.versions[id];
    const vname = `${key.name}/cryptoKeyVersions/${id}`;
    if (!v) throw ApiError.notFound(`CryptoKeyVersion ${vname} not found.`);
    if (v.state !== 'ENABLED') throw ApiError.precondition(`${vname} is not enabled, current state is: ${v.state}.`);

    const header = Buffer.alloc(HEADER);
    header[0] = 1;
    keyTag(key.name).copy(header, 1);
    header.writeUInt32BE(Number(id), 9);
    crypto.randomBytes(12).copy(header, 13);
    const cipher = crypto.createCipheriv('aes-256-gcm', Buffer.from(v.material, 'base64'), header.subarray(13));
    cipher.setAAD(Buffer.concat([header, aad]));
    const ciphertext = Buffer.concat([header, cipher.update(plaintext), cipher.final(), cipher.getAuthTag()]);
    return {
      name: vname,
      ciphertext,
      ciphertextCrc32c: { value: crc32c(ciphertext) },
      verifiedPlaintextCrc32c: req.plaintextCrc32c !== null && req.plaintextCrc32c !== undefined,
      verifiedAdditionalAuthenticatedDataCrc32c:
        req.additionalAuthenticatedDataCrc32c !== null && req.additionalAuthenticatedDataCrc32c !== undefined,
      protectionLevel: key.level || 'SOFTWARE',
    };
  }

  Decrypt(req, who) {
    if (!KEY_RE.test(req.name)) throw badName(req.name);
    this.authorize(who, req.name, USE_DECRYPT);
    const key = this.key(req.name);
    const ct = Buffer.from(req.ciphertext || []);
    const aad = Buffer.from(req.additionalAuthenticatedData || []);
    if (ct.length === 0) throw ApiError.invalid('ciphertext is required.');
    checkCrc(req.ciphertextCrc32c, ct, 'ciphertext');
    checkCrc(req.additionalAuthenticatedDataCrc32c, aad, 'additional_authenticated_data');
    const invalid = ApiError.invalid('Decryption failed: the ciphertext is invalid.');
    if (ct.length < HEADER + 16 || ct[0] !== 1) throw invalid;
    const id = String(ct.readUInt32BE(9));
    if (!ct.subarray(1, 9).equals(keyTag(key.name)) || !key.versions[id]) {
      throw ApiError.invalid("Decryption failed: verify that 'name' refers to the correct CryptoKey.");
    }
    const v = key.versions[id];
    const vname = `${key.name}/cryptoKeyVersions/${id}`;
    if (v.state !== 'ENABLED') throw ApiError.precondition(`${vname} is not enabled, current state is: ${v.state}.`);
    const header = ct.subarray(0, HEADER);
    const decipher = crypto.createDecipheriv('aes-256-gcm', Buffer.from(v.material, 'base64'), header.subarray(13));
    decipher.setAAD(Buffer.concat([header, aad]));
    decipher.setAuthTag(ct.subarray(ct.length - 16));
    let plaintext;
    try {
      plaintext = Buffer.concat([decipher.update(ct.subarray(HEADER, ct.length - 16)), decipher.final()]);
    } catch (_) {
      throw invalid;
    }
    return {
      plaintext,
      plaintextCrc32c: { value: crc32c(plaintext) },
      usedPrimary: id === key.primaryId,
      protectionLevel: key.level || 'SOFTWARE',
    };
  }
}

function keyTag(keyName) {
  return crypto.createHash('sha256').update(keyName).digest().subarray(0, 8);
}

// Cloud KMS refuses data whose checksum does not match, before doing anything with it.
function checkCrc(wrapper, data, field) {
  const want = i64(wrapper);
  if (want !== null && want !== crc32c(data)) {
    throw ApiError.invalid(`The checksum in field ${field}_crc32c did not match the data in field ${field}.`);
  }
}

module.exports = { Kms };
