'use strict';
// HTTP/JSON transcoding of the REAL google.cloud.kms.v1 protos.
//
// The routes come from the protos' own google.api.http annotations (plus the IAM mixin
// routes, which live in the service config rather than the protos), and every request and
// response goes through the proto3 JSON mapping (camelCase names, bytes as base64, int64 as
// strings, enums as names or, with `$alt=json;enum-encoding=int`, numbers). Unknown field
// names and query parameters are rejected with Google's wording, so a client that sends a
// field the real API does not have fails here too.

const fs = require('fs');
const path = require('path');

const { ApiError } = require('./errors');

// Well-known types with a special JSON form: their JSON is not an object of fields.
const SPECIAL_JSON = new Set([
  '.google.protobuf.Any', '.google.protobuf.Value', '.google.protobuf.Struct',
  '.google.protobuf.ListValue', '.google.protobuf.Duration', '.google.protobuf.Timestamp',
  '.google.protobuf.FieldMask', '.google.protobuf.Int64Value', '.google.protobuf.UInt64Value',
  '.google.protobuf.Int32Value', '.google.protobuf.UInt32Value', '.google.protobuf.BoolValue',
  '.google.protobuf.StringValue', '.google.protobuf.BytesValue', '.google.protobuf.DoubleValue',
  '.google.protobuf.FloatValue',
]);

// Query parameters that are system parameters, not request fields.
const SYSTEM_PARAMS = new Set(['$alt', 'alt', '$fields', 'fields', 'key', '$prettyPrint', 'prettyPrint']);

// IAMPolicy mixin routes for the resources the fake keeps policies on.
const IAM_RESOURCES = [
  'projects/*/locations/*/keyRings/*',
  'projects/*/locations/*/keyRings/*/cryptoKeys/*',
];

function fieldOf(type, key) {
  const fields = type.fields;
  if (Object.prototype.hasOwnProperty.call(fields, key)) return fields[key];
  const c = camel(key);
  return Object.prototype.hasOwnProperty.call(fields, c) ? fields[c] : null;
}

function camel(s) {
  return s.replace(/_([a-z0-9])/g, (_, c) => c.toUpperCase());
}

function load(modulesDir) {
  const protobuf = require(path.join(modulesDir, 'protobufjs'));
  const serializer = require(path.join(modulesDir, 'proto3-json-serializer'));
  const include = [
    path.join(modulesDir, '@google-cloud/kms/build/protos'),
    path.join(modulesDir, 'google-gax/build/protos'),
  ];
  const root = new protobuf.Root();
  root.resolvePath = (origin, target) => {
    if (path.isAbsolute(target)) return target;
    for (const dir of include) {
      const p = path.join(dir, target);
      if (fs.existsSync(p)) return p;
    }
    return target; // protobufjs bundles the common google/protobuf files
  };
  root.loadSync(['google/cloud/kms/v1/service.proto', 'google/iam/v1/iam_policy.proto'], {
    keepCase: false,
  });
  root.resolveAll();
  return new Transcoder(root, serializer);
}

// `/v1/{name=projects/*/…/cryptoKeys/**}:encrypt` → { regex, field: 'name' }.
function compileTemplate(template) {
  const m = /^(.*)\{([a-z_.]+)(?:=([^}]*))?\}(.*)$/.exec(template);
  if (!m) throw new Error(`unsupported http template ${template}`);
  const [, before, field, pattern = '*', after] = m;
  const esc = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  const body = pattern
    .split('/')
    .map((seg) => (seg === '**' ? '.+' : seg === '*' ? '[^/]+' : esc(seg)))
    .join('/');
  return { regex: new RegExp(`^${esc(before)}(${body})${esc(after)}$`), field, verb: after.includes(':') };
}

class Transcoder {
  constructor(root, serializer) {
    this.root = root;
    this.serializer = serializer;
    this.routes = [];
    const svc = root.lookupService('google.cloud.kms.v1.KeyManagementService');
    for (const method of Object.values(svc.methods)) {
      for (const opt of method.parsedOptions || []) {
        const rule = opt['(google.api.http)'];
        if (rule) this.addRule(method.name, method.resolvedRequestType, method.resolvedResponseType, rule);
      }
    }
    const iam = root.lookupService('google.iam.v1.IAMPolicy');
    for (const res of IAM_RESOURCES) {
      const m = (name) => iam.methods[name];
      const add = (name, verb, http) => {
        this.addRule(name, m(name).resolvedRequestType, m(name).resolvedResponseType, {
          [http]: `/v1/{resource=${res}}:${verb}`,
          ...(http === 'post' ? { body: '*' } : {}),
        });
      };
      add('SetIamPolicy', 'setIamPolicy', 'post');
      add('GetIamPolicy', 'getIamPolicy', 'get');
      add('TestIamPermissions', 'testIamPermissions', 'post');
    }
    // Custom verbs first: `…/cryptoKeys/k:getIamPolicy` must not read as GetCryptoKey.
    this.routes.sort((a, b) => Number(b.verb) - Number(a.verb));
  }

  addRule(name, requestType, responseType, rule) {
    for (const httpMethod of ['get', 'post', 'patch', 'delete', 'put']) {
      if (!rule[httpMethod]) continue;
      const t = compileTemplate(rule[httpMethod]);
      this.routes.push({
        name, requestType, responseType, httpMethod: httpMethod.toUpperCase(),
        regex: t.regex, field: t.field, verb: t.verb, body: rule.body || null,
      });
    }
  }

  match(httpMethod, pathname) {
    for (const r of this.routes) {
      if (r.httpMethod !== httpMethod) continue;
      const m = r.regex.exec(pathname);
      if (m) return { route: r, value: decodeURIComponent(m[1]) };
    }
    return null;
  }

  // Builds the request message from the path variable, the body and the query string.
  request(matched, query, bodyJson) {
    const { route, value } = matched;
    let json = {};
    if (route.body === '*') {
      json = bodyJson === undefined ? {} : bodyJson;
    } else if (route.body) {
      json[camel(route.body)] = bodyJson === undefined ? {} : bodyJson;
    } else if (bodyJson !== undefined && Object.keys(bodyJson).length > 0) {
      throw ApiError.invalid('Invalid JSON payload received. This method takes no request body.');
    }
    if (json === null || typeof json !== 'object' || Array.isArray(json)) {
      throw ApiError.invalid('Invalid JSON payload received. Expected an object.');
    }
    this.checkKnown(route.requestType, json, '');
    setPath(json, route.field.split('.').map(camel), value);
    for (const [k, v] of query) {
      if (SYSTEM_PARAMS.has(k) || v === '') continue;
      this.setQuery(route.requestType, json, k, v);
    }
    try {
      return this.serializer.fromProto3JSON(route.requestType, json);
    } catch (e) {
      throw ApiError.invalid(`Invalid JSON payload received. ${e.message}`);
    }
  }

  // Proto3 JSON of a response built from a plain object (enum names, Buffers, {seconds}).
  response(route, obj, numericEnums) {
    const msg = route.responseType.fromObject(obj);
    return this.serializer.toProto3JSON(msg, { numericEnums });
  }

  // Rejects unknown field names (accepting snake_case spellings, which proto3 JSON allows,
  // by renaming them to camelCase in place).
  checkKnown(type, json, where) {
    const fqn = type.fullName;
    if (SPECIAL_JSON.has(fqn) || json === null) return;
    if (typeof json !== 'object' || Array.isArray(json)) {
      throw ApiError.invalid(`Invalid JSON payload received. Expected an object for '${where || type.name}'.`);
    }
    for (const key of Object.keys(json)) {
      const field = fieldOf(type, key);
      if (field && field.name !== key) {
        json[field.name] = json[key];
        delete json[key];
      }
      if (!field) {
        throw ApiError.invalid(
          `Invalid JSON payload received. Unknown name "${key}" at '${where || type.name}': Cannot find field.`,
        );
      }
      const sub = field.resolvedType;
      if (!sub || sub.values) continue; // scalar or enum
      const v = json[field.name];
      const at = where ? `${where}.${field.name}` : field.name;
      if (field.repeated && Array.isArray(v)) v.forEach((e, i) => this.checkKnown(sub, e, `${at}[${i}]`));
      else if (field.map && v && typeof v === 'object') Object.values(v).forEach((e) => this.checkKnown(sub, e, at));
      else this.checkKnown(sub, v, at);
    }
  }

  // `options.requestedPolicyVersion=3`, `updateMask=state`, `cryptoKeyId=k`, …
  setQuery(type, json, name, raw) {
    const parts = name.split('.');
    let t = type;
    let obj = json;
    for (let i = 0; i < parts.length; i++) {
      const field = fieldOf(t, parts[i]);
      if (!field) {
        throw ApiError.invalid(
          `Invalid JSON payload received. Unknown name "${name}": Cannot bind query parameter. Field '${parts[i]}' could not be found in request message.`,
        );
      }
      const sub = field.resolvedType;
      const last = i === parts.length - 1;
      if (!last) {
        if (!sub || sub.values) throw ApiError.invalid(`Cannot bind query parameter '${name}'.`);
        obj[field.name] = obj[field.name] || {};
        obj = obj[field.name];
        t = sub;
        continue;
      }
      let v = raw;
      if (field.type === 'bool') v = raw === 'true' ? true : raw === 'false' ? false : raw;
      else if (sub && sub.values && /^-?\d+$/.test(raw)) v = Number(raw);
      if (field.repeated) (obj[field.name] = obj[field.name] || []).push(v);
      else obj[field.name] = v;
    }
  }
}

function setPath(json, fields, value) {
  let obj = json;
  for (const f of fields.slice(0, -1)) {
    if (obj[f] === undefined || obj[f] === null) obj[f] = {};
    obj = obj[f];
  }
  obj[fields[fields.length - 1]] = value;
}

module.exports = { load };
