"""ingest.scp: each association's copy of the receiver's presentation contexts is a complete deep copy (what
pynetdicom's ``copy.deepcopy`` gave), made without the generic deepcopy, and negotiating on it leaves the server's
own contexts untouched."""

from __future__ import annotations

import copy

from pacsflow_router.config import parse_config
from pacsflow_router.ingest.scp import DicomReceiver, _ContextsCopiedCheaply
from pacsflow_router.ingest.spool import Spool


def test_the_cheap_copy_equals_deepcopy_and_is_independent(tmp_path):
    config = parse_config({"aeTitle": "PACSFLOW", "allowedCallingAETitles": ["STORESCU"],
                           "spoolDir": str(tmp_path)})
    spool = Spool(tmp_path, 0.999)
    try:
        contexts = DicomReceiver(config, spool, port=0)._ae.supported_contexts
        contexts[0].scp_role = True  # a role set, as an extended negotiation would
        server_contexts = _ContextsCopiedCheaply(contexts)
        cheap, deep = copy.deepcopy(server_contexts), copy.deepcopy(list(contexts))
        assert len(cheap) == len(deep) == len(contexts) > 100
        for a, b, original in zip(cheap, deep, contexts, strict=True):
            assert type(a) is type(b) and vars(a) == vars(b) and a is not original
        before = [(vars(c) | {"_transfer_syntax": list(c.transfer_syntax)}) for c in contexts]
        for context in cheap:  # what negotiation does to an association's copy
            context.result = 0
            context._as_scp = True
            context._transfer_syntax.append("1.2.3.4")
        assert [vars(c) for c in contexts] == before
    finally:
        spool.close()
