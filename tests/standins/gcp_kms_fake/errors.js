'use strict';
// Google's error shape: {"error": {"code": 403, "message": "...", "status": "PERMISSION_DENIED"}},
// with the HTTP status that google.rpc.Code maps to.

const HTTP = {
  CANCELLED: 499, UNKNOWN: 500, INVALID_ARGUMENT: 400, DEADLINE_EXCEEDED: 504, NOT_FOUND: 404,
  ALREADY_EXISTS: 409, PERMISSION_DENIED: 403, UNAUTHENTICATED: 401, RESOURCE_EXHAUSTED: 429,
  FAILED_PRECONDITION: 400, ABORTED: 409, OUT_OF_RANGE: 400, UNIMPLEMENTED: 501, INTERNAL: 500,
  UNAVAILABLE: 503, DATA_LOSS: 500,
};

class ApiError extends Error {
  constructor(status, message, httpCode) {
    super(message);
    this.status = status;
    this.httpCode = httpCode || HTTP[status] || 500;
  }

  body() {
    return { error: { code: this.httpCode, message: this.message, status: this.status } };
  }

  static invalid(message) { return new ApiError('INVALID_ARGUMENT', message); }
  static notFound(message) { return new ApiError('NOT_FOUND', message); }
  static precondition(message) { return new ApiError('FAILED_PRECONDITION', message); }
  static denied(permission, resource) {
    return new ApiError(
      'PERMISSION_DENIED',
      `Permission '${permission}' denied on resource '${resource}' (or it may not exist).`,
    );
  }
  static unauthenticated() {
    return new ApiError(
      'UNAUTHENTICATED',
      'Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.',
    );
  }
}

module.exports = { ApiError, HTTP };
