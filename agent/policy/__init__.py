"""The owner's privacy policy: which signals go to whom, how precisely, until when.

`load_policy(path)` reads and validates a policy file (every problem as
FILE:LINE: field: message, in `PolicyError.problems`); `docs/policy.md` is the
schema. No policy, or an empty one, means no collection.
"""

from carledger.policy.classes import CLASSES, LOCATION, PERSONAL, TECHNICAL, Classifier, default_class
from carledger.policy.document import (
    AGGREGATE_FUNCTIONS,
    MAX_CONSENT,
    METRICS,
    Aggregate,
    Consent,
    Ignition,
    LocationPrecision,
    Metrics,
    Policy,
    PolicyError,
    PolicyUnreadable,
    Stream,
    Zone,
    check_policy,
    load_policy,
    parse_policy,
    policy_from_text,
    vehicle_signals,
)
from carledger.policy.duration import DurationError, parse_duration
from carledger.policy.pseudonym import new_secret, pseudonym
from carledger.tomlfile import FieldError

__all__ = [
    "AGGREGATE_FUNCTIONS", "CLASSES", "LOCATION", "MAX_CONSENT", "METRICS", "PERSONAL", "TECHNICAL",
    "Aggregate", "Classifier", "Consent", "DurationError", "Ignition", "FieldError", "LocationPrecision", "Metrics", "Policy",
    "PolicyError", "PolicyUnreadable", "Stream", "Zone", "check_policy", "default_class", "load_policy",
    "new_secret", "parse_duration", "parse_policy", "policy_from_text", "pseudonym", "vehicle_signals",
]
