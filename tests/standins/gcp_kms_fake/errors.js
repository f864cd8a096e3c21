'use strict';
// Google's error shape (AIP-193):
//   {"error": {"code": 403, "message": "...", "status": "PERMISSION_DENIED",
//              "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", ...}]}}
// with the HTTP status that google.rpc.Code maps to, and the structured details
// (google.rpc.ErrorInfo, PreconditionFailure, RetryInfo, BadRequest) in proto3 JSON.

const HTTP = {
  CANCELLED: 499, UNKNOWN: 500, INVALID_ARGUMENT: 400, DEADLINE_EXCEEDED: 504, NOT_FOUND: 404,
  ALREADY_EXISTS: 409, PERMISSION_DENIED: 403, UNAUTHENTICATED: 401, RESOURCE_EXHAUSTED: 429,
  FAILED_PRECONDITION: 400, ABORTED: 409, OUT_OF_RANGE: 400, UNIMPLEMENTED: 501, INTERNAL: 500,
  UNAVAILABLE: 503, DATA_LOSS: 500,
};

const TYPE = (name) => `type.googleapis.com/google.rpc.${name}`;
const errorInfo = (reason, domain, metadata) => ({ '@type': TYPE('ErrorInfo'), reason, domain, metadata });

class ApiError extends Error {
  constructor(status, message, httpCode, details) {
    super(message);
    this.status = status;
    this.httpCode = httpCode || HTTP[status] || 500;
    this.details = details || [];
  }

  body() {
    const error = { code: this.httpCode, message: this.message, status: this.status };
    if (this.details.length > 0) error.details = this.details;
    return { error };
  }

  static invalid(message) { return new ApiError('INVALID_ARGUMENT', message); }
  static notFound(message) { return new ApiError('NOT_FOUND', message); }
  static precondition(message) { return new ApiError('FAILED_PRECONDITION', message); }

  // IAM's answer for a permission the caller lacks, and equally for a resource that does not
  // exist when the caller has no grant above it: "(or it may not exist)". The ErrorInfo is
  // IAM's (reason IAM_PERMISSION_DENIED, the permission and resource in its metadata).
  static denied(permission, resource) {
    return new ApiError(
      'PERMISSION_DENIED',
      `Permission '${permission}' denied on resource '${resource}' (or it may not exist).`,
      undefined,
      [errorInfo('IAM_PERMISSION_DENIED', 'iam.googleapis.com', { permission, resource })],
    );
  }

  static unauthenticated() {
    return new ApiError(
      'UNAUTHENTICATED',
      'Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.',
    );
  }

  // Named errors a test can inject (POST /_fake/faults {"preset": NAME}), shaped like
  // Google's: the project-level 403s carry ErrorInfo reasons of the googleapis.com domain;
  // Cloud EKM's FAILED_PRECONDITION carries a PreconditionFailure whose violation[1].type is
  // the "error domain" (kms/docs/reference/ekm_errors). EXTERNAL_PERMISSION_DENIED is
  // documented; EXTERNAL_UNAVAILABLE and violation[0]'s EKM_KEY_STATE stand for the other
  // domains and the key-state entry, whose exact names the daemon does not depend on.
  static preset(name, resource) {
    const project = (/^projects\/([^/]+)/.exec(resource || '') || [])[1] || 'test-project';
    const consumer = { service: 'cloudkms.googleapis.com', consumer: `projects/${project}` };
    const ekm = (domain, message) => new ApiError('FAILED_PRECONDITION', message, undefined, [{
      '@type': TYPE('PreconditionFailure'),
      violations: [
        { type: 'EKM_KEY_STATE', subject: resource, description: 'The Cloud EKM key version is ENABLED.' },
        { type: domain, subject: 'https://ekm.example/v0/keys/k', description: message },
      ],
    }]);
    switch (name) {
      case 'SERVICE_DISABLED':
        return new ApiError('PERMISSION_DENIED', `Cloud Key Management Service (KMS) API has not been used in project ${project} before or it is disabled. Enable it by visiting https://console.developers.google.com/apis/api/cloudkms.googleapis.com/overview?project=${project} then retry.`, undefined,
          [errorInfo('SERVICE_DISABLED', 'googleapis.com', consumer)]);
      case 'BILLING_DISABLED':
        return new ApiError('PERMISSION_DENIED', `This API method requires billing to be enabled. Please enable billing on project #${project} by visiting https://console.developers.google.com/billing/enable?project=${project} then retry.`, undefined,
          [errorInfo('BILLING_DISABLED', 'googleapis.com', consumer)]);
      case 'EKM_PERMISSION_DENIED':
        return ekm('EXTERNAL_PERMISSION_DENIED', 'Permission was denied when accessing the key.');
      case 'EKM_UNAVAILABLE':
        return ekm('EXTERNAL_UNAVAILABLE', 'The external key manager did not respond in time.');
      default:
        return null;
    }
  }
}

module.exports = { ApiError, HTTP };
