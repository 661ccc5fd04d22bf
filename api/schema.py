"""OpenAPI: describe the token scheme to drf-spectacular, and the errors every operation can give."""
from drf_spectacular.extensions import OpenApiAuthenticationExtension, OpenApiSerializerExtension
from drf_spectacular.utils import OpenApiResponse, PolymorphicProxySerializer

from api import serializers as s


class ApiTokenScheme(OpenApiAuthenticationExtension):
    target_class = "api.authentication.ApiTokenAuthentication"
    name = "tokenAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "apiKey", "in": "header", "name": "Authorization",
                "description": "`Token <key>`: a key issued by an admin (Admin → API tokens). A token issued "
                               "*read only* may use GET, HEAD and OPTIONS only: any other method answers 403 "
                               "(\"This API token is read-only: …\") and changes nothing. Every call made with "
                               "a token is attributed to that token in the audit trail."}


class StrictUploadInputErrors(OpenApiSerializerExtension):
    """No other keys and at least one: an upload's 400 is then exactly one of its two shapes (the
    per-file result has ``accepted``, which this one forbids), as ``oneOf`` requires."""

    target_class = "api.serializers.UploadInputErrorSerializer"

    def map_serializer(self, auto_schema, direction):
        schema = auto_schema._map_serializer(self.target, direction, bypass_extensions=True)
        return {**schema, "additionalProperties": False, "minProperties": 1}


def upload_refused() -> OpenApiResponse:
    """The upload's 400: every file rejected (the per-file result), or the call itself invalid."""
    return OpenApiResponse(
        PolymorphicProxySerializer(component_name="UploadRefused", resource_type_field_name=None,
                                   serializers=[s.UploadResultSerializer, s.UploadInputErrorSerializer]),
        description="No file was stored: either every file was rejected (each with its reason), or the request "
                    "itself is invalid (messages per field).")


ERROR = {"type": "object", "properties": {"detail": {"type": "string"}}, "required": ["detail"]}
FIELD_ERRORS = {"type": "object", "additionalProperties": True,
                "description": "messages per field (a list of strings each), or `detail`"}
COMMON_ERRORS = {
    "400": ("Invalid input or query parameter: messages per field.", FIELD_ERRORS),
    "401": ("No valid token (missing, wrong, revoked or expired).", ERROR),
    "403": ("Authenticated, but this role may not do this.", ERROR),
    "404": ("No such object in your scope (another clinic's records are never confirmed), or no such page.", ERROR),
    "429": ("Rate limit reached; retry after the Retry-After header's seconds.", ERROR),
}
# any write is refused to a read-only token (403), and can clash with a concurrent one (409: the
# database refuses it; nothing is saved)
WRITE_ERRORS = {
    "403": ("Authenticated, but this role may not do this, or the token is read-only.", ERROR),
    "409": ("The records' state does not allow this, or a write made at the same moment clashed with it; "
            "nothing was saved.", ERROR),
}
WRITES = {"post", "put", "patch", "delete"}


def add_error_responses(result: dict, generator, request, public) -> dict:
    """drf-spectacular postprocessing hook: every operation documents the errors every operation
    can give, and every write the 409 of a concurrent clash (schemathesis holds the app to its
    schema, error answers included)."""
    for methods in result.get("paths", {}).values():
        for method, operation in methods.items():
            responses = operation.setdefault("responses", {})
            errors = {**COMMON_ERRORS, **WRITE_ERRORS} if method in WRITES else COMMON_ERRORS
            for code, (description, schema) in errors.items():
                responses.setdefault(code, {"description": description,
                                            "content": {"application/json": {"schema": schema}}})
    return result
