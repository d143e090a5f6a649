"""The rules of ingest, written once for every spool backend (pure: no I/O, no clock).

Which visitor a message belongs to, whether it was seen before (as a resend or as an order
already reported), what it changes in the visitor's state, what the relay adds to it and which
vendors get it: all of that is decided here, by a pure fold over the request's messages. A
spool backend only does what storage must do: read what the fold asks for (through a
`Snapshot`), and write the resulting `IngestPlan` atomically. SQLite reads inside its writer's
transaction; Redis reads under WATCH and, when the fold asks for a key it did not read yet,
reads it and folds again (the fold has no side effects until the plan is written).

The modules: `context` (what a request tells the rules and what they answer), `early` (what
follows from a message and the settings alone, answered on the request path), `plan` (the
interface to storage: `Snapshot` read, `IngestPlan` written) and `fold` (the rules).
"""

from shoprelay.rules.context import (
    IngestResult,
    RequestContext,
    Router,
    SitePolicy,
)
from shoprelay.rules.early import (
    HELD_BACK_ORDER,
    IDENTIFY_NOT_SIGNED,
    IDENTITY_NOT_SIGNED,
    MAX_USER_HASH_SECONDS,
    claim_refusal,
    claim_signed,
    early_refusals,
    identify_signature,
    order_id_of,
    signature_problem,
    user_id_of,
)
from shoprelay.rules.fold import (
    IngestRules,
    Keys,
)
from shoprelay.rules.plan import (
    IngestPlan,
    Missing,
    OrderRecord,
    Snapshot,
    StoredMessage,
    UserBinding,
)

__all__ = [
    "HELD_BACK_ORDER",
    "IDENTIFY_NOT_SIGNED",
    "IDENTITY_NOT_SIGNED",
    "MAX_USER_HASH_SECONDS",
    "IngestPlan",
    "IngestResult",
    "IngestRules",
    "Keys",
    "Missing",
    "OrderRecord",
    "RequestContext",
    "Router",
    "SitePolicy",
    "Snapshot",
    "StoredMessage",
    "UserBinding",
    "claim_refusal",
    "claim_signed",
    "early_refusals",
    "identify_signature",
    "order_id_of",
    "signature_problem",
    "user_id_of",
]
