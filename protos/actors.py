"""Actor ids that agent, collector and regulator must read the same way.

An actor is who a job runs for (an organisation, a Slurm account, a
namespace). A report publishes it in ``GpuProcess.actor`` / ``JobInfo.actor``
as one of:

- ``lei:<LEI>``: a public identifier (ISO 17442 Legal Entity Identifier);
- ``c:<32 hex>``: a salted commitment, ``HMAC-SHA256(salt, name)`` truncated to
  128 bits, where ``name`` is ``lei:<LEI>``, ``org:<organisation>`` or the
  local key (``account:acme``); the operator opens it by handing a regulator
  the salt and the name;
- ``org:<organisation>``: the plain name (only when the operator chooses to);
- ``unknown``: no source named an actor. Unknown actors are pooled under this
  one id, never merged into a named actor.

An empty id (an agent before actors, or an unattributed process) is ``unknown``.
"""

from __future__ import annotations

import hashlib
import hmac
import re

UNKNOWN_ACTOR = "unknown"
MAX_ACTOR_ID = 255
COMMITMENT_PREFIX = "c:"
LEI_PREFIX = "lei:"
ORG_PREFIX = "org:"
# ISO 17442: 18 alphanumerics then 2 check digits.
LEI = re.compile(r"[A-Z0-9]{18}[0-9]{2}")
_ACTOR = re.compile(r"unknown|lei:[A-Z0-9]{18}[0-9]{2}|c:[0-9a-f]{32}|org:[^\x00-\x1f\x7f]{1,251}")


def lei_valid(lei: str) -> bool:
    """ISO 17442 shape and ISO 7064 MOD 97-10 check digits."""
    if not LEI.fullmatch(lei):
        return False
    digits = "".join(str(int(c, 36)) for c in lei)
    return int(digits) % 97 == 1


def commitment(salt: bytes, name: str) -> str:
    """``c:<32 hex>``: the salted commitment to ``name`` (see module docstring)."""
    return COMMITMENT_PREFIX + hmac.new(salt, name.encode(), hashlib.sha256).hexdigest()[:32]


def valid_actor_id(actor: str) -> bool:
    """Whether ``actor`` is a well-formed published actor id (``""`` is not)."""
    return len(actor) <= MAX_ACTOR_ID and bool(_ACTOR.fullmatch(actor))


def actor_key(actor: str) -> str:
    """The id figures count under: ``actor`` itself, or ``unknown`` when empty."""
    return actor or UNKNOWN_ACTOR
