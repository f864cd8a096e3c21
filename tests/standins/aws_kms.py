"""moto's AWS KMS, patched to behave like AWS where kms-broker's tests depend on it.

Run with the stand-in venv's python:

    .standins/venv/bin/python tests/standins/aws_kms.py --port 5000

It serves moto on 127.0.0.1 only. Stock moto (5.x) records a key's state but never enforces
it: a disabled key still encrypts. This launcher patches moto's KMS request handlers so that,
as AWS KMS does (error shapes from the KMS API reference: HTTP 400, JSON `__type` and
`message`):

- Encrypt / Decrypt / GenerateDataKey* / ReEncrypt on a Disabled key -> DisabledException;
  on a PendingDeletion (or PendingImport, Unavailable) key -> KMSInvalidStateException.
- A key policy `Deny` statement whose Action matches (`kms:*`, `kms:Decrypt`, `kms:Encrypt*`,
  ...) -> AccessDeniedException, for those operations and DescribeKey. This is how tests
  REVOKE access, through the ordinary PutKeyPolicy API: `Deny kms:*` (DescribeKey sees it)
  or `Deny kms:Decrypt` (only a real Decrypt sees it, as with a revoked grant). Stand-in
  simplification: Deny statements apply to every caller (Principal and Condition are not
  evaluated), and admin calls (PutKeyPolicy, EnableKey, ...) are never denied, so a test
  can always restore the policy.
- STS AssumeRole of a role whose name starts with `denied` -> AccessDenied, as when the
  role's trust policy no longer admits the daemon's principal (AWS answers HTTP 403; moto's
  serializer sends 400 for errors outside the STS model, which clients classify by code).
- An access key id that starts with `INVALID` -> UnrecognizedClientException ("The security
  token included in the request is invalid."), AWS's answer for unknown or deleted keys.
- Decrypt naming a KeyId other than the ciphertext's key -> IncorrectKeyException (moto says
  AccessDeniedException); a ciphertext moto cannot parse or whose key it does not know ->
  InvalidCiphertextException.
- RotateKeyOnDemand of a symmetric key makes new key material, as AWS does (moto only
  records the rotation): Encrypt uses the new material from then on, and Decrypt still
  opens what every earlier material encrypted ("KMS retains all previous versions of the
  key material ... to decrypt any data encrypted by that KMS key"). The key id, ARN and
  policy stay; nothing a client sees says which material a ciphertext used.
"""

import argparse
import fnmatch
import json
import re
import sys

from moto.core.exceptions import JsonRESTError
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from moto.kms import models as kms_models
from moto.kms import utils as kms_utils
from moto.kms.exceptions import InvalidCiphertextException
from moto.kms.responses import KmsResponse
from moto.sts.exceptions import STSClientError
from moto.sts.responses import TokenResponse


class KmsError(JsonRESTError):
    """An AWS KMS error: HTTP 400, body {"__type": code, "message": message}."""

    code = 400

    def __init__(self, error_type, message):
        super().__init__(error_type, message)


def _caller_access_key(handler):
    auth = handler.headers.get("Authorization", "") or ""
    m = re.search(r"Credential=([^/,\s]+)/", auth)
    return m.group(1) if m else ""


def _check_caller(handler):
    if _caller_access_key(handler).startswith("INVALID"):
        raise KmsError(
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        )


def _key(handler, key_id):
    """The moto Key named by any id form; raises moto's NotFoundException if absent."""
    handler._validate_key_id(key_id)
    backend = handler.kms_backend
    return backend.keys[backend.any_id_to_key_id(key_id)]


def _check_policy(key, action):
    try:
        policy = json.loads(key.policy)
    except (TypeError, ValueError):
        return
    statements = policy.get("Statement", [])
    if isinstance(statements, dict):
        statements = [statements]
    for st in statements:
        if str(st.get("Effect", "")).lower() != "deny":
            continue
        actions = st.get("Action", [])
        if isinstance(actions, str):
            actions = [actions]
        if any(fnmatch.fnmatchcase(action.lower(), a.lower()) for a in actions):
            raise KmsError(
                "AccessDeniedException",
                f"User: arn:aws:iam::{key.account_id}:user/kms-broker is not authorized to "
                f"perform: {action} on resource: {key.arn} with an explicit deny in a "
                "resource-based policy",
            )


def _check_state(key):
    state = key.key_state
    if state == "Disabled":
        raise KmsError("DisabledException", f"{key.arn} is disabled.")
    if state in ("PendingDeletion", "PendingImport", "Unavailable", "PendingReplicaDeletion"):
        words = re.sub(r"(?<!^)([A-Z])", r" \1", state).lower()
        raise KmsError("KMSInvalidStateException", f"{key.arn} is {words}.")


def _ciphertext_key(handler, blob):
    """The raw key id a moto ciphertext names, or InvalidCiphertextException."""
    try:
        key_id = kms_utils._deserialize_ciphertext_blob(blob).key_id
    except Exception:
        key_id = None
    if not key_id or key_id not in handler.kms_backend.keys:
        raise KmsError("InvalidCiphertextException", "")
    return key_id


def _guard(handler, key_id, action):
    key = _key(handler, key_id)
    _check_policy(key, action)
    _check_state(key)
    return key


def _wrap(name, guard):
    original = getattr(KmsResponse, name)

    def patched(self):
        _check_caller(self)
        guard(self)
        return original(self)

    patched.__name__ = name
    setattr(KmsResponse, name, patched)


def _decrypt_guard(self):
    blob = self._get_param("CiphertextBlob")
    key_id = self._get_param("KeyId")
    if key_id:
        key = _guard(self, key_id, "kms:Decrypt")
        if _ciphertext_key(self, blob) != key.id:
            raise KmsError(
                "IncorrectKeyException",
                "The key ID in the request does not identify a KMS key that can perform "
                "this operation.",
            )
    else:
        _guard(self, _ciphertext_key(self, blob), "kms:Decrypt")


def _re_encrypt_guard(self):
    source = _ciphertext_key(self, self._get_param("CiphertextBlob"))
    _guard(self, source, "kms:ReEncryptFrom")
    _guard(self, self._get_param("DestinationKeyId"), "kms:ReEncryptTo")


def _describe_guard(self):
    _check_policy(_key(self, self._get_param("KeyId")), "kms:DescribeKey")


def _create_key_defaults(self):
    # AWS defaults KeyUsage to ENCRYPT_DECRYPT; moto leaves it null in DescribeKey.
    if self._get_param("KeyUsage") is None:
        body = json.loads(self.body or "{}")
        body["KeyUsage"] = "ENCRYPT_DECRYPT"
        self.body = json.dumps(body)


class StsAccessDenied(STSClientError):
    code = "AccessDenied"


def _assume_role_guard(self):
    role_arn = self._get_param("RoleArn") or ""
    if role_arn.split(":role/")[-1].startswith("denied"):
        raise StsAccessDenied(
            f"User: arn:aws:iam::123456789012:user/kms-broker is not authorized to perform: "
            f"sts:AssumeRole on resource: {role_arn}"
        )


def _rotate_material():
    """RotateKeyOnDemand replaces the key material and keeps the old ones for Decrypt."""
    original_rotate = kms_models.KmsBackend.rotate_key_on_demand

    def rotate(self, key_id):
        out = original_rotate(self, key_id)
        key = self.keys[self.get_key_id(key_id)]
        if key.key_spec == "SYMMETRIC_DEFAULT":
            key.previous_key_material = [key.key_material] + getattr(
                key, "previous_key_material", []
            )
            key.key_material = kms_utils.generate_master_key()
        return out

    kms_models.KmsBackend.rotate_key_on_demand = rotate

    original_decrypt = kms_models.decrypt

    def decrypt(master_keys, ciphertext_blob, encryption_context):
        try:
            return original_decrypt(
                master_keys=master_keys,
                ciphertext_blob=ciphertext_blob,
                encryption_context=encryption_context,
            )
        except InvalidCiphertextException:
            pass
        # Not the current material: one of the earlier ones, newest first (AES-GCM's tag
        # says which, as AWS's backing-key id in its real ciphertext format does).
        try:
            ct = kms_utils._deserialize_ciphertext_blob(ciphertext_blob)
            key = master_keys[ct.key_id]
        except Exception:
            raise InvalidCiphertextException()
        aad = kms_utils._serialize_encryption_context(encryption_context=encryption_context)
        for material in getattr(key, "previous_key_material", []):
            try:
                d = Cipher(algorithms.AES(material), modes.GCM(ct.iv, ct.tag)).decryptor()
                d.authenticate_additional_data(aad)
                return d.update(ct.ciphertext) + d.finalize(), ct.key_id
            except Exception:
                continue
        raise InvalidCiphertextException()

    kms_models.decrypt = decrypt


def install():
    _rotate_material()
    _wrap("encrypt", lambda self: _guard(self, self._get_param("KeyId"), "kms:Encrypt"))
    _wrap("generate_data_key", lambda self: _guard(self, self._get_param("KeyId"), "kms:GenerateDataKey"))
    _wrap("decrypt", _decrypt_guard)
    _wrap("re_encrypt", _re_encrypt_guard)
    _wrap("describe_key", _describe_guard)
    _wrap("create_key", _create_key_defaults)
    # The admin calls the tests make still check the caller's credentials.
    for name in ("disable_key", "enable_key", "schedule_key_deletion", "cancel_key_deletion",
                 "put_key_policy", "rotate_key_on_demand", "create_alias"):
        _wrap(name, lambda self: None)

    original_assume_role = TokenResponse.assume_role

    def assume_role(self):
        _assume_role_guard(self)
        return original_assume_role(self)

    TokenResponse.assume_role = assume_role


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    install()
    from moto.server import main as moto_main

    # 127.0.0.1 only: a test KMS that ignores authentication must not face a network.
    moto_main(["-H", "127.0.0.1", "-p", str(args.port)])


if __name__ == "__main__":
    main(sys.argv[1:])
