"""JSON Schemas (draft 2020-12) for the KEDA objects in deploy/kubernetes, so tests can check them
without a cluster: ScaledObject and TriggerAuthentication of keda.sh/v1alpha1.

Written from KEDA's documentation of those objects and of its Redis-lists scaler, for the fields
taskhub's manifests use. Unknown fields are refused, so a misspelt one fails here instead of being
ignored; extend the schema when a manifest needs a field it lacks.
"""

from __future__ import annotations

from typing import Any

API_VERSION = "keda.sh/v1alpha1"

Schema = dict[str, Any]

_DNS_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_DIGITS = r"^[0-9]+$"
_HOST_PORT = r"^[^\s:/]+:[0-9]{1,5}$"

_NAME: Schema = {"type": "string", "maxLength": 253, "pattern": _DNS_NAME}
_STRING_MAP: Schema = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA: Schema = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": _NAME,
        "namespace": _NAME,
        "labels": _STRING_MAP,
        "annotations": _STRING_MAP,
    },
}

_HPA_SCALING_RULES: Schema = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        # The HPA refuses longer windows, and KEDA only reports that in its operator's log.
        "stabilizationWindowSeconds": {"type": "integer", "minimum": 0, "maximum": 3600},
        "selectPolicy": {"enum": ["Max", "Min", "Disabled"]},
        "policies": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["type", "value", "periodSeconds"],
                "additionalProperties": False,
                "properties": {
                    "type": {"enum": ["Pods", "Percent"]},
                    "value": {"type": "integer", "minimum": 1},
                    "periodSeconds": {"type": "integer", "minimum": 1, "maximum": 1800},
                },
            },
        },
    },
}

TRIGGER_TYPES = ("redis",)
"""Scalers whose metadata this schema knows; KEDA has many more, add each with its rules."""

_BOOLEAN_STRING: Schema = {"type": "string", "enum": ["true", "false"]}
_NUMBER_STRING: Schema = {"type": "string", "pattern": _DIGITS}

REDIS_LIST_METADATA: Schema = {
    "type": "object",
    "required": ["listName", "listLength"],
    "additionalProperties": False,
    "properties": {
        "address": {"type": "string", "pattern": _HOST_PORT},
        "addressFromEnv": {"type": "string"},
        "host": {"type": "string"},
        "hostFromEnv": {"type": "string"},
        "port": _NUMBER_STRING,
        "portFromEnv": {"type": "string"},
        "usernameFromEnv": {"type": "string"},
        "passwordFromEnv": {"type": "string"},
        "listName": {"type": "string", "minLength": 1},
        "listLength": {"type": "string", "pattern": r"^[1-9][0-9]*$"},
        "activationListLength": _NUMBER_STRING,
        "databaseIndex": _NUMBER_STRING,
        "enableTLS": _BOOLEAN_STRING,
        "unsafeSsl": _BOOLEAN_STRING,
    },
    # Exactly one way to find the server.
    "oneOf": [
        {"required": ["address"]},
        {"required": ["addressFromEnv"]},
        {"required": ["host", "port"]},
        {"required": ["hostFromEnv", "portFromEnv"]},
    ],
}
"""The `redis` trigger: the length of one Redis list, the Celery queue of that name."""

_TRIGGER: Schema = {
    "type": "object",
    "required": ["type", "metadata"],
    "additionalProperties": False,
    "properties": {
        "type": {"enum": list(TRIGGER_TYPES)},
        "name": {"type": "string"},
        # KEDA's metadata is a map of strings: `listLength: 200` unquoted is refused.
        "metadata": _STRING_MAP,
        "authenticationRef": {
            "type": "object",
            "required": ["name"],
            "additionalProperties": False,
            "properties": {
                "name": _NAME,
                "kind": {"enum": ["TriggerAuthentication", "ClusterTriggerAuthentication"]},
            },
        },
        "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
        "useCachedMetrics": {"type": "boolean"},
    },
    "allOf": [
        {
            "if": {"properties": {"type": {"const": "redis"}}},
            "then": {"properties": {"metadata": REDIS_LIST_METADATA}},
        }
    ],
}

_COUNT: Schema = {"type": "integer", "minimum": 0}

SCALED_OBJECT: Schema = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "KEDA ScaledObject",
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": API_VERSION},
        "kind": {"const": "ScaledObject"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "name": _NAME,
                        "envSourceContainerName": {"type": "string"},
                    },
                },
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": _COUNT,
                "initialCooldownPeriod": _COUNT,
                "idleReplicaCount": _COUNT,
                "minReplicaCount": _COUNT,
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "advanced": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "name": _NAME,
                                "behavior": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {
                                        "scaleUp": _HPA_SCALING_RULES,
                                        "scaleDown": _HPA_SCALING_RULES,
                                    },
                                },
                            },
                        },
                    },
                },
                "triggers": {"type": "array", "minItems": 1, "items": _TRIGGER},
            },
        },
    },
}

TRIGGER_AUTHENTICATION: Schema = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "KEDA TriggerAuthentication",
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": API_VERSION},
        "kind": {"const": "TriggerAuthentication"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "required": ["secretTargetRef"],
            "additionalProperties": False,
            "properties": {
                "secretTargetRef": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["parameter", "name", "key"],
                        "additionalProperties": False,
                        "properties": {
                            "parameter": {"type": "string", "minLength": 1},
                            "name": _NAME,
                            "key": {"type": "string", "minLength": 1},
                        },
                    },
                },
            },
        },
    },
}

SCHEMAS: dict[str, Schema] = {
    "ScaledObject": SCALED_OBJECT,
    "TriggerAuthentication": TRIGGER_AUTHENTICATION,
}
"""Each KEDA kind taskhub's manifests use, and its schema."""
